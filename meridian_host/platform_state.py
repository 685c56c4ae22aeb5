"""What `meridian up` started, kept on disk so `status` and `down` can find it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from platformdirs import user_state_dir


def state_root() -> Path:
    return Path(os.environ.get("MERIDIAN_STATE_DIR") or user_state_dir("meridian"))


def platform_dir(name: str) -> Path:
    return state_root() / name


@dataclass
class PlatformState:
    name: str
    spec_path: str
    platform_id: str
    ray_temp_dir: str
    gcs_address: str
    dashboard_url: str
    router_url: str
    head_pid: int = 0
    # Ray worker nodes the local capacity provider started: node id -> pid, region
    # slug, port block index, launch time.
    local_nodes: dict[str, dict] = field(default_factory=dict)
    router_pid: int = 0
    capacity_pid: int = 0

    @property
    def directory(self) -> Path:
        return platform_dir(self.name)

    @property
    def logs_dir(self) -> Path:
        return self.directory / "logs"

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.directory / "state.json")

    @classmethod
    def load(cls, name: str) -> PlatformState | None:
        path = platform_dir(name) / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def forget(self) -> None:
        (self.directory / "state.json").unlink(missing_ok=True)
