"""The router as it runs: the ASGI app, the region table and its health polls, the
upstream proxy with failover, auth, rate limits, client location, tracing and metrics.
It may import `geo_router.policy` and `meridian_core`."""
