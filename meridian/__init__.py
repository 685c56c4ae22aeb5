"""Meridian's composition root: the spec, the CLI, the local launcher."""
