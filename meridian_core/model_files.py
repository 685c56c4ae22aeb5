"""Where a model's files are on this machine: read by `meridian models pull` (which
puts them there) and by the router (which counts prompt tokens with its tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

from meridian_core.spec import ModelSource, PackagedModelSource, PathModelSource

# Written last into a converted model directory: its presence means the directory is whole.
COMPLETE_MARKER = ".meridian-complete"


def cache_root() -> Path:
    return Path(os.environ.get("MERIDIAN_CACHE_DIR") or user_cache_dir("meridian")) / "models"


def packaged_model_dir(source: PackagedModelSource) -> Path:
    return cache_root() / f"{source.package}-{source.version}"


def local_model_dir(source: ModelSource) -> Path | None:
    """The model's directory here, if it is whole; None for a hub model, or one not pulled."""
    if isinstance(source, PackagedModelSource):
        directory = packaged_model_dir(source)
        return directory if (directory / COMPLETE_MARKER).exists() else None
    if isinstance(source, PathModelSource):
        return source.path if (source.path / "config.json").exists() else None
    return None
