"""GPU capacity across AWS, GCP and local Ray nodes: the price catalog, the placement
policy, the providers, the live capacity loop and the spot simulator.

It may import `meridian_core`, `meridian_host` and `autoscaler` (the global loop's
floors and the published scaling decisions).
"""
