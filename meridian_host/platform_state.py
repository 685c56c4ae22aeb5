"""What `meridian up` started, kept on disk so `status`, `down` and the per-region
capacity loops can find it.

One file for the platform (`state.json`: the router, the global loop and each region's
cluster) and one for each region's local Ray nodes (`clusters/<slug>/local-nodes.json`),
written only by that region's capacity provider, so two regions' loops never write the
same file. Both are typed and validated when read.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_state_dir
from pydantic import BaseModel, ConfigDict, Field


def state_root() -> Path:
    return Path(os.environ.get("MERIDIAN_STATE_DIR") or user_state_dir("meridian"))


def platform_dir(name: str) -> Path:
    return state_root() / name


def cluster_dir(name: str, slug: str) -> Path:
    """Where one region's cluster keeps its files: its local nodes, ledger, token, logs."""
    return platform_dir(name) / "clusters" / slug


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` whole: a reader sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class StateModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClusterState(StateModel):
    """One region's Ray cluster: where it listens and what Meridian runs for it."""

    slug: str
    gcs_address: str
    dashboard_url: str
    # Ray's unix sockets live under it; unset for a cluster Meridian did not start.
    ray_temp_dir: str | None = None
    # 0: not started by Meridian (an existing cluster), or not yet.
    head_pid: int = Field(default=0, ge=0)
    capacity_pid: int = Field(default=0, ge=0)


class PlatformState(StateModel):
    name: str
    spec_path: str
    # Every process Meridian starts carries it, so `down` can sweep up what they spawned.
    platform_id: str
    router_url: str
    router_pid: int = Field(default=0, ge=0)
    global_loop_pid: int = Field(default=0, ge=0)
    # By region name.
    clusters: dict[str, ClusterState] = Field(default_factory=dict)
    # Regions `up` could not start, by name, with why; the others run without them.
    failed_regions: dict[str, str] = Field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return platform_dir(self.name)

    @property
    def logs_dir(self) -> Path:
        return self.directory / "logs"

    def cluster_dir(self, slug: str) -> Path:
        return cluster_dir(self.name, slug)

    def save(self) -> None:
        write_atomically(self.directory / "state.json", self.model_dump_json(indent=2))

    @classmethod
    def load(cls, name: str) -> PlatformState | None:
        path = platform_dir(name) / "state.json"
        if not path.exists():
            return None
        return cls.model_validate_json(path.read_text())

    def forget(self) -> None:
        (self.directory / "state.json").unlink(missing_ok=True)


class LocalNode(StateModel):
    """A Ray worker node the local provider started: its `ray start` and port block."""

    pid: int = Field(ge=1)
    block: int = Field(ge=0)
    launched_at_s: float


class LocalNodes(StateModel):
    """One region's local Ray nodes by node id, kept by its capacity provider."""

    nodes: dict[str, LocalNode] = Field(default_factory=dict)

    @staticmethod
    def path(state: PlatformState, slug: str) -> Path:
        return state.cluster_dir(slug) / "local-nodes.json"

    @classmethod
    def load(cls, state: PlatformState, slug: str) -> LocalNodes:
        path = cls.path(state, slug)
        return cls.model_validate_json(path.read_text()) if path.exists() else cls()

    def save(self, state: PlatformState, slug: str) -> None:
        write_atomically(self.path(state, slug), self.model_dump_json(indent=2))

    @classmethod
    def forget(cls, state: PlatformState, slug: str) -> None:
        cls.path(state, slug).unlink(missing_ok=True)
