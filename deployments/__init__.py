"""Ray Serve applications: one per region, built on ray.serve.llm.

It may import `meridian_core`, `meridian_host` (model files) and `autoscaler` (the
Serve scaling policy and its published decisions).
"""
