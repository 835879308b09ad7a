# Two commands on a fresh machine with python3:
#   make demo   set up .venv and run the main job (train a VAE on the bundled digits)
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# `make demo` again replaces runs/vae (the main command refuses to overwrite a checkpoint unasked)
DEMO_ARGS ?= --overwrite

.PHONY: setup demo test bench clean clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test,examples]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ppl $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

# The project's own outputs; JAX's compilation cache lives outside the tree (clean-cache).
clean:
	rm -rf $(VENV) .pytest_cache runs

JAX_CACHE := $(or $(PPL_JAX_CACHE),$(HOME)/.cache/ppl/jax)

clean-cache:
	rm -rf "$(JAX_CACHE)"
