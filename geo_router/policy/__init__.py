"""The router's scoring, pure: plain data in (region loads, the request, each region's
replica profile), a route decision out. It imports `meridian_core` only."""
