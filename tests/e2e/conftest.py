"""One real platform for the whole e2e run: Ray head + two region nodes, vLLM CPU on
the packaged model, and the geo router, started as `meridian up` starts them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meridian import launcher
from meridian_core.spec import PlatformSpec, load_spec
from meridian_host.platform_state import PlatformState

SPEC_PATH = Path(__file__).with_name("e2e.yaml")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(item.fspath).parent == SPEC_PATH.parent:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def spec() -> PlatformSpec:
    return load_spec(SPEC_PATH)


@contextmanager
def running_platform(spec_path: Path, state_dir: Path) -> Iterator[PlatformState]:
    """`meridian up` of `spec_path` with its state in `state_dir`; `down` afterwards."""
    name = load_spec(spec_path).name
    mp = pytest.MonkeyPatch()
    mp.setenv("MERIDIAN_STATE_DIR", str(state_dir))
    launcher.down(name)  # a platform left by an interrupted run
    try:
        state, _ = launcher.up(spec_path, on_step=lambda message: print(f"[{name}] {message}", flush=True))
        yield state
    finally:
        launcher.down(name)
        mp.undo()


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformState]:
    with running_platform(SPEC_PATH, tmp_path_factory.mktemp("state")) as state:
        yield state


def platform_of_its_own(spec_path: Path) -> tuple[Callable[..., PlatformSpec], Callable[..., Iterator[PlatformState]]]:
    """A test module's own `spec` and `platform` fixtures, for the platform `spec_path`
    describes, up for the module's tests and down after them."""

    @pytest.fixture(scope="module", name="spec")
    def own_spec() -> PlatformSpec:
        return load_spec(spec_path)

    @pytest.fixture(scope="module", name="platform")
    def own_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformState]:
        with running_platform(spec_path, tmp_path_factory.mktemp(f"state-{spec_path.stem}")) as state:
            yield state

    return own_spec, own_platform
