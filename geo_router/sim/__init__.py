"""The routing simulator: a request trace replayed over simulated regions whose replicas
serve by an explicit replica profile, under Meridian's scorer and its peers. It imports
`geo_router.policy` and `meridian_core`, never `geo_router.live`."""
