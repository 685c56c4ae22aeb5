"""Ray Serve applications: one per region, built on ray.serve.llm."""
