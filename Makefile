# The README's commands. `make app` installs and opens the workbench; `make test` installs
# and runs the whole test suite (CI runs exactly this through .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH="torch" (or a CUDA wheel) to install another build.
TORCH ?= torch==2.13.0

.PHONY: install test app lab notebooks results
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The workbench on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT move it; see --help).
app: install
	$(BIN)/python -m bltlab app

lab: install
	$(BIN)/jupyter lab notebooks/

# Re-execute the notebook series in place (stored outputs are what tests/test_notebooks.py checks), each
# figure also stored as a PNG (bltlab/lab.py; needs Chromium), then stamp each one's metadata with the
# sha256 of the shipped weights the outputs were made with.
NOTEBOOKS := $(wildcard notebooks/[0-9][0-9]_*.ipynb)
notebooks: install
	BLTLAB_FIGURE_PNG=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace $(NOTEBOOKS)
	$(BIN)/python notebooks/stamp.py $(NOTEBOOKS)

# The results page (docs/results.md): held-out prompts, every mode, the paper's table on our model.
BENCH_ARGS ?= --max-bytes 48
results: install
	$(BIN)/python -m bltlab prompts --task translation --n 40 --out benchmarks/prompts_translation.jsonl
	$(BIN)/python -m bltlab prompts --task code --n 24 --out benchmarks/prompts_code.jsonl
	$(BIN)/python -m bltlab bench --prompts benchmarks/prompts_translation.jsonl $(BENCH_ARGS) --json benchmarks/bench_translation.json
	$(BIN)/python -m bltlab bench --prompts benchmarks/prompts_code.jsonl $(BENCH_ARGS) --json benchmarks/bench_code.json
	$(BIN)/python -m bltlab diagnose --json benchmarks/diagnose_small.json
	$(BIN)/python -m bltlab results --bench translation=benchmarks/bench_translation.json --bench code=benchmarks/bench_code.json --diagnose benchmarks/diagnose_small.json --out docs/results.md
