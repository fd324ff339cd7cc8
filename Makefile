# The README's commands. `make app` installs and opens the workbench; `make test` installs
# and runs the whole test suite (CI runs exactly this through .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH="torch" (or a CUDA wheel) to install another build.
TORCH ?= torch==2.13.0

.PHONY: install test app lab
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

app: install
	$(BIN)/python apps/workbench.py

lab: install
	$(BIN)/jupyter lab notebooks/
