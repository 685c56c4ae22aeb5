"""Host plumbing: process groups, Ray node processes, the platform's state on disk and
model files (download and conversion).

It may import `meridian_core` only; the packages above it (capacity, deployments, the
composition root) use it to start and find what runs on this machine.
"""
