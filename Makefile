# podkit: two commands on a fresh machine.
#   make up    set up if needed, then run the quick-start pod
#              (make up EXAMPLE=search: examples/search/pods.yaml, the flagship)
#   make test  set up if needed, then lint, type-check and run the test suite
.PHONY: up test setup system venv native lint typecheck pytest bench clean

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

setup: system venv native

# Servers the tests and examples use, from the system's packages (idempotent).
system:
	@bash scripts/ensure-system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# The data plane compiled to C with mypyc (skipped when current; PODKIT_NATIVE=0: pure Python).
native: venv
	@PY=$(PY) bash scripts/build-native.sh

up: setup
	@EXAMPLE='$(EXAMPLE)' bash scripts/up.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy --strict src

pytest: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: setup lint typecheck pytest

clean:
	@bash scripts/build-native.sh --clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .podkit
