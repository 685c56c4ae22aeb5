"""The spot simulator: replays spot availability traces under Meridian's placement policy and its peers.

It may import capacity's vocabulary and policy (`capacity.model`, `capacity.catalog`,
`capacity.policy`) and `meridian_core`; never `capacity.live`.
"""
