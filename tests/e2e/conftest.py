"""One real platform for the whole e2e run: Ray head + two region nodes, vLLM CPU on
the packaged model, and the geo router, started as `meridian up` starts them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meridian import launcher
from meridian.platform_state import PlatformState
from meridian.spec import PlatformSpec, load_spec

SPEC_PATH = Path(__file__).with_name("e2e.yaml")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.fspath).parent == SPEC_PATH.parent:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def spec() -> PlatformSpec:
    return load_spec(SPEC_PATH)


@pytest.fixture(scope="session")
def platform(spec: PlatformSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformState]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MERIDIAN_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    launcher.down(spec.name)  # a platform left by an interrupted run
    state, _ = launcher.up(SPEC_PATH, on_step=lambda message: print(f"[e2e] {message}", flush=True))
    yield state
    launcher.down(spec.name)
    mp.undo()
