# Two set-up commands for a fresh machine: `make demo` and `make test`.
# TORCH_SPEC pins the CPU wheel that lies on this project's machines; elsewhere override it,
# e.g. `make test TORCH_SPEC=torch` (or any torch>=2.2 build for your CUDA).
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY          = $(VENV)/bin/python
PIP         = $(PY) -m pip

.PHONY: demo lint test bench bench-peers clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	touch $@

# the tests load k-diffusion's sampling.py and external.py alone: k-diffusion and the two modules sampling.py imports
# go in with --no-deps (k-diffusion's requirements include torchvision, which would replace the installed torch)
$(VENV)/.dev: $(VENV)/.base Makefile
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps k-diffusion torchdiffeq torchsde trampoline
	touch $@

## make demo: create .venv, install unifusion, run `unifusion demo` (writes runs/demo/)
demo: $(VENV)/.base
	$(VENV)/bin/unifusion demo

## make lint: ruff (pycodestyle E/W, pyflakes F, bugbear B; rules in pyproject.toml) and pyflakes on the whole tree
lint: $(VENV)/.dev
	$(PY) -m ruff check .
	$(PY) -m pyflakes unifusion tests bench scripts

## make test: install the dev extras into .venv, lint, then run the whole suite on 2 processes
test: lint
	$(PY) -m pytest -n 2 --durations=15

## make bench: the sampler benchmark on exact oracles (tables in bench/results/)
bench: $(VENV)/.dev
	$(PY) bench/samplers.py

## make bench-peers: install the [bench] extra and k-diffusion, then benchmark side by side. k-diffusion goes in
## with --no-deps: its requirements include torchvision, which pins one torch release and would replace the
## installed torch (a multi-GB CUDA build); the benchmark loads only its sampling.py, whose imports the extra has.
bench-peers: $(VENV)/.dev
	$(PIP) install -q -e ".[bench]"
	$(PIP) install -q --no-deps k-diffusion
	$(PY) bench/samplers.py --peers

clean:
	rm -rf $(VENV) runs .pytest_cache
