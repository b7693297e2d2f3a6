# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is absent and install the package into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.selfsup-installed
# The CPU build of PyTorch; an unpinned `torch` would pull several GB of CUDA wheels.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-slow test-all lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/selfsup demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests

test-all: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m '' tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench docs/examples
	$(VENV)/bin/ruff format --check src tests bench docs/examples

# CIFAR-10 shards to benchmark on (the project's copy sits beside the checkout).
BENCH_DATA ?= ../shared/data/cifar10/train-000.tar
BENCH_DEVICE ?= cpu

bench: $(STAMP)
	$(PY) bench/throughput.py --data '$(BENCH_DATA)' --device $(BENCH_DEVICE)

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
