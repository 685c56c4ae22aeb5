"""The geo-aware OpenAI-compatible router in front of every region.

Three rooms: `policy/` (pure: which region answers first, and which of its replicas),
`live/` (the ASGI app, its region table, proxying, auth, rate limits and metrics, and the
replica router each region's Serve runs) and `sim/` (the routing simulator). The
package may import `meridian_core` only.
"""
