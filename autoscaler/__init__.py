"""Per-region replica targets from demand and latency SLOs (issue: autoscaler). Empty so far."""
