"""Meridian's composition root, the top floor: the `meridian` CLI, the local launcher,
status and the Serve config for a spec.

It may import every package; none imports it (only benchmarks/ and tests stand above).
"""
