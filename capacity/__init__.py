"""GPU capacity across AWS, GCP and local Ray nodes.

At the package's root is the vocabulary its rooms share: `model.py` (nodes, placements,
capacity events, the `Provider` protocol) and `catalog.py` (what each cloud sells, and
at what price). Three rooms: `policy/` (pure placement), `live/` (the providers, the
capacity loop and its ledger) and `sim/` (spot-trace replay of placement against its
peers). The package may import `meridian_core`, `meridian_host` (local Ray nodes) and
`autoscaler` (the global loop's floors and the published scaling decisions).
"""
