"""Per-region replica targets from demand and latency SLOs, the global loop's floors,
and the autoscaling simulator with its peers.

It may import `meridian_core` only (and Ray, in the Serve adapter).
"""
