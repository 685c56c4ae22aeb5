"""The router as it runs: the ASGI app, the region table and its health polls, the
upstream proxy with failover, auth, rate limits, client location, tracing and metrics;
and, running inside each region's Serve, the model apps' replica router
(`serve_replica_router.py`). It may import `geo_router.policy` and `meridian_core`."""
