"""The ground floor: the vocabulary every part of Meridian shares.

The platform spec (every section of it), the typed messages between processes, the
replica performance model, geography, the RTT prior and where the shared datasets are.
Plain data and pure functions. It imports no other package of Meridian, and every
package may import it.
"""
