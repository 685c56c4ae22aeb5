"""The autoscaling simulator: a request trace replayed against one region's replicas under
Meridian's policy and its peers, and `meridian simulate autoscale`. It may import
`autoscaler.policy` and `meridian_core`, never `autoscaler.live`."""
