"""The autoscaler in the running platform: the policy as Ray Serve's custom autoscaling
policy, the replicas' reports turned into signals, and the decisions and floors kept in
Ray's KV. It may import `autoscaler.policy`, `meridian_core` and Ray."""
