# Two set-up commands for a fresh machine: `make demo` and `make test`.
# TORCH_SPEC pins the CPU wheel that lies on this project's machines; elsewhere override it,
# e.g. `make test TORCH_SPEC=torch` (or any torch>=2.2 build for your CUDA).
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY          = $(VENV)/bin/python
PIP         = $(PY) -m pip

.PHONY: demo test bench bench-peers clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	touch $@

# k-diffusion without its dependencies (torchvision & co.): the tests load its sampling.py and external.py alone
$(VENV)/.dev: $(VENV)/.base Makefile
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps k-diffusion
	touch $@

## make demo: create .venv, install unifusion, run `unifusion demo` (writes runs/demo/)
demo: $(VENV)/.base
	$(VENV)/bin/unifusion demo

## make test: install the dev extras into .venv and run the whole suite on 2 processes
test: $(VENV)/.dev
	$(PY) -m pytest -n 2 --durations=15

## make bench: the sampler benchmark on exact oracles (tables in bench/results/)
bench: $(VENV)/.dev
	$(VENV)/bin/unifusion bench samplers

## make bench-peers: install diffusers (k-diffusion comes with the dev set-up), then benchmark side by side
bench-peers: $(VENV)/.dev
	$(PIP) install -q ".[bench]"
	$(VENV)/bin/unifusion bench samplers --peers

clean:
	rm -rf $(VENV) runs .pytest_cache
