"""GPU capacity across AWS, GCP and local Ray nodes (issue: capacity manager). Empty so far."""
