# lct — the two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

# (re)install when pyproject.toml or the lock changes; pip finds torch on this machine's disk
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/lct demo --out demo-out

test: venv
	$(VENV)/bin/pytest -q --durations=25 tests

test-fast: venv
	$(VENV)/bin/pytest -q -m "not slow" tests

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf demo-out .pytest_cache
