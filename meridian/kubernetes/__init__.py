"""Kubernetes manifests rendered from the platform spec (`meridian render kubernetes`):
plain, deterministic YAML a user keeps in git or feeds to Kustomize."""
