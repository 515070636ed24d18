# The two commands of the README. Each sets itself up on a fresh machine (venv, package, tools).
#   make app    start the screening app on the bundled model (http://localhost:8501)
#   make test   run the whole test suite (installs headless Chromium for the browser test)
#   CI: .ci/run (CI=true: any skipped test fails the run)
#   make notebook     open the walkthrough notebook in JupyterLab (installs it into .venv)
#   make walkthrough  re-run the walkthrough in its full setting, outputs saved into docs/ (trains the released recipe)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The ImageNet weights live in ../shared/keras beside a checkout of this repository (never committed).
SHARED_KERAS := $(abspath ../shared/keras)
export KERAS_HOME ?= $(if $(wildcard $(SHARED_KERAS)/models),$(SHARED_KERAS),$(HOME)/.keras)
PORT ?= 8501

.PHONY: app test test-fast install browser lint benchmarks notebook walkthrough

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is needed (python3.11 or python3 on PATH)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,ray]"
	touch $(STAMP)

app: $(STAMP)
	$(VENV)/bin/pneumoscan app --port $(PORT)

# Debian's Chromium drives the browser test (Playwright's own browser download needs the internet).
# Without it the browser test skips, except under CI=true, where a skip is a failure: stop here.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; } \
	  || case "$$(echo "$$CI" | tr A-Z a-z)" in \
	    1|true|yes|on) echo "error: could not install chromium, which CI needs for the browser test" \
	      "(apt-get install chromium)" >&2; exit 1;; \
	    *) echo "warning: could not install chromium; the browser test will be skipped";; \
	  esac

# Two worker processes, a whole test file per worker (module fixtures are built once): 603 s
# against 819 s in one process for the same 506 tests on 2 cores (2026-12-01).
test: $(STAMP) browser
	$(PY) -m pytest -ra --durations=30 -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not slow and not browser"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs/walkthrough.py
	$(VENV)/bin/ruff format --check src tests benchmarks docs/walkthrough.py

benchmarks: $(STAMP)
	$(PY) benchmarks/data_report.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/app_latency.py
	$(PY) benchmarks/train_speed.py

NOTEBOOK_STAMP := $(VENV)/.notebook-installed

$(NOTEBOOK_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,ray,notebook]"
	touch $(NOTEBOOK_STAMP)

# docs/walkthrough.ipynb is paired with docs/walkthrough.py (jupytext): saving either in JupyterLab
# updates the other. NOTEBOOK_ARGS passes options to JupyterLab (e.g. --no-browser --port 8890).
notebook: $(NOTEBOOK_STAMP)
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(NOTEBOOK_ARGS) docs/walkthrough.ipynb

# The committed outputs: the full setting (the released recipe on every training image), executed
# in place by papermill, then the twin re-synced. Runs go to runs/walkthrough/.
walkthrough: $(STAMP)
	cd docs && ../$(VENV)/bin/papermill walkthrough.ipynb walkthrough.ipynb --request-save-on-cell-execute
	$(VENV)/bin/jupytext --sync docs/walkthrough.ipynb
