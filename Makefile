# lct — the two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv demo eval-fresh test test-fast bench clean

venv: $(STAMP)

# (re)install when pyproject.toml or the lock changes; pip finds torch on this machine's disk
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

demo: venv
	$(VENV)/bin/lct demo --out demo-out

# The evaluation at the scale its criteria are meant for, on the demo's checkpoints: 40 scenes of 14 fresh
# films (synth seed 11; the demo's films are seed 0, so no scene was trained on) x 3 seeds. ~15 min on 2 cores.
FRESH := demo-out/fresh
eval-fresh: venv
	@test -f demo-out/run/export/lct.json || { echo "eval-fresh evaluates the demo's checkpoints: run 'make demo' first"; exit 2; }
	$(VENV)/bin/lct synth --out $(FRESH)/films --films 14 --seed 11 --hidden
	$(VENV)/bin/lct curate $(FRESH)/films --out $(FRESH)/dataset --config demo-out/dataset/config.yaml
	$(VENV)/bin/lct eval --checkpoint demo-out/run --data $(FRESH)/dataset --out $(FRESH)/eval --scenes 40 --seeds 3 \
		--steps 16 --cfg 1.0 --ablation demo-out/run-sync --causal demo-out/run-causal

test: venv
	$(VENV)/bin/pytest -q --durations=25 tests

test-fast: venv
	$(VENV)/bin/pytest -q -m "not slow" tests

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf demo-out .pytest_cache
