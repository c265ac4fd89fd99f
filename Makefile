# The README's two commands: `make demo` (the main job) and `make test` (every test).
# Each creates and fills the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/demo
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: venv demo test notebooks clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet --no-deps -e . 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import crs, torch, torchvision, diffusers, cleanfid, papermill, nbval, matplotlib, jupyterlab"
	touch $@

# The main job on the embedded default: the demo experiment (params/demo.yaml: real digits, every stage
# 00-05, the report) through the batch runner into $(RUN_DIR); rerunning skips stages that are up to date.
demo: venv
	$(PY) -m crs run params/demo.yaml --run-dir $(RUN_DIR)
	@echo "demo: results in $(RUN_DIR)/, report at $(RUN_DIR)/report/index.html"

test: venv
	$(PY) -m pytest

# Re-execute the committed notebooks in place with their default parameters (their stored outputs).
notebooks: venv
	rm -rf notebooks/runs
	for nb in notebooks/0*.ipynb; do (cd notebooks && ../$(PY) -m papermill $$(basename $$nb) $$(basename $$nb) --no-progress-bar) || exit 1; done

clean:
	rm -rf runs notebooks/runs
