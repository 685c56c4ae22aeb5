"""The house's floors and rooms, read from the code's own imports (lazy ones included).

Floors: a package imports only the packages below it, so no import runs back up and
none loops. Rooms: pure policy imports no live or simulator code, and a simulator
imports no live code, so the simulators replay exactly what the live system runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Each package, and the packages it may import: every one of them stands on a lower floor.
MAY_IMPORT = {
    "meridian_core": set(),
    "meridian_host": {"meridian_core"},
    "autoscaler": {"meridian_core"},
    "geo_router": {"meridian_core"},
    "capacity": {"meridian_core", "meridian_host", "autoscaler"},
    "deployments": {"meridian_core", "meridian_host", "autoscaler"},
    "meridian": {"meridian_core", "meridian_host", "autoscaler", "geo_router", "capacity", "deployments"},
}
# A module in a room (the key) never imports a module in these rooms, of any package.
ROOM_NEVER = {"policy": {"live", "sim"}, "sim": {"live"}}
# At a package's root, only its command-line face reaches into its rooms.
ROOT_FACES = {"cli", "__main__", "__init__"}


def imports_of(path: Path) -> list[tuple[str, ...]]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.extend(tuple(alias.name.split(".")) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            modules.extend((*node.module.split("."), alias.name) for alias in node.names)
    return [m for m in modules if m[0] in MAY_IMPORT]


MODULES = sorted(p.relative_to(REPO) for package in MAY_IMPORT for p in (REPO / package).rglob("*.py"))


def test_every_package_is_read():
    assert {m.parts[0] for m in MODULES} == set(MAY_IMPORT)
    assert len(MODULES) > 60


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_imports_stay_on_lower_floors_and_out_of_forbidden_rooms(module: Path):
    package, *inside = module.with_suffix("").parts
    room = inside[0] if len(inside) > 1 else None
    for imported in imports_of(REPO / module):
        target = imported[0]
        where = ".".join(imported)
        if target != package:
            assert target in MAY_IMPORT[package], f"{module} imports {where}: {target} is not below {package}"
        target_room = imported[1] if len(imported) > 2 else None
        assert target_room not in ROOM_NEVER.get(room, set()), f"{module} ({room}) imports {where}"
        if room is None and inside and inside[0] not in ROOT_FACES and target == package:
            assert target_room not in {"live", "policy", "sim"}, f"{module}, shared vocabulary, imports {where}"


def test_the_compiled_routing_core_has_one_python_face_per_room():
    """routing_core (Rust) is reached through geo_router/policy/scoring.py alone for its
    scorer, so the router and the simulators share its one adapter and its inputs'
    types, through geo_router/policy/ratelimit.py for API keys' limits, and through
    geo_router/live/front.py for the router's compiled front (geo_router/live/usage.py
    for its reading of an answer's usage, which the Python app shares)."""
    importers = set()
    for module in MODULES:
        for node in ast.walk(ast.parse((REPO / module).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            if any(name.split(".")[0] == "routing_core" for name in names):
                importers.add(str(module))
    assert importers == {
        "geo_router/policy/scoring.py",
        "geo_router/policy/ratelimit.py",
        "geo_router/live/front.py",
        "geo_router/live/usage.py",
    }
