"""The ground floor: the vocabulary every part of Meridian shares.

The platform spec (every section of it), the replica performance model, geography and
the RTT prior. Plain data and pure functions. It imports no other package of Meridian,
and every package may import it.
"""
