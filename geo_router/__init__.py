"""The geo-aware OpenAI-compatible router in front of every region.

Three rooms: `policy/` (the pure scorer: which region answers first), `live/` (the
ASGI app, its region table, proxying, auth, rate limits and metrics) and `sim/` (the
routing simulator). The package may import `meridian_core` only.
"""
