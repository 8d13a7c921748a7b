# ddlab: `make lab` opens the course, `make test` checks it. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= course
# Reinstall only when pyproject.toml changes: the stamp is newer than it otherwise.
STAMP  := $(VENV)/.ddlab-installed
PYTEST_WORKERS ?= 2

.PHONY: lab test test-unit test-lessons test-browser figures clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "ddlab needs Python >= 3.10, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Without an NVIDIA GPU, take PyTorch's CPU build (a few hundred MB instead of several GB).
	@# If its index cannot be reached, fall through: pip then picks torch from the usual index.
	@if ! $(PY) -c 'import torch' 2>/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "installing the CPU build of torch"; \
		$(PY) -m pip install -q --retries 0 --timeout 20 'torch>=2.2' \
			--index-url https://download.pytorch.org/whl/cpu 2>/dev/null || true; \
	fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m ipykernel install --sys-prefix --name ddlab --display-name "Python (ddlab)" >/dev/null
	@touch $@

lab: $(STAMP)
	$(VENV)/bin/jupyter lab lessons/

test: test-unit test-lessons

test-unit: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

# Each notebook stays on one worker (--dist loadfile): its cells share one kernel. DDLAB_SCALE=quick:
# lessons whose real CPU setting takes minutes (lesson 9 trains for several) run a shorter one here.
# Their figures go to a temporary folder: the committed PNGs come from `make figures`, and a test
# run must leave the work tree as it found it (the root conftest.py checks that).
test-lessons: $(STAMP)
	@figs=$$(mktemp -d); trap 'rm -rf "$$figs"' EXIT; \
	DDLAB_SCALE=quick DDLAB_FIGURES=$$figs $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --nbval-lax --nbval-current-env lessons/

# Lessons in a real browser: JupyterLab + Debian's headless Chromium driven by Playwright; runs
# every lesson with widgets, moves each slider and dropdown, and saves screenshots to
# tests/browser/screenshots/. Installs chromium (apt, as root) and playwright (pip) when missing.
test-browser: $(STAMP)
	PY=$(PY) bash .ci/browser_test.sh

# Re-execute every lesson headless, in order, rewriting its outputs and the PNGs in figures/.
figures: $(STAMP)
	@for nb in lessons/[0-9]*.ipynb; do \
		echo "executing $$nb"; \
		$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=900 "$$nb" || exit 1; \
	done

clean-venv:
	rm -rf $(VENV)
