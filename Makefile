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

STAGES := 00_base_model 01_rate_estimation 02_schedule_optimization 03_training_schedule_finetune 04_sampling 05_evaluation

# The main job on the embedded default: every stage (00-05) with its notebook's default
# parameters, executed with papermill into $(RUN_DIR) (executed notebooks, artifacts, figures).
demo: venv
	mkdir -p $(RUN_DIR)
	for nb in $(STAGES); do $(PY) -m papermill --cwd $(RUN_DIR) notebooks/$$nb.ipynb $(RUN_DIR)/$$nb.ipynb -p run_dir . || exit 1; done
	@echo "demo: results in $(RUN_DIR)/ (models/, rate.json, schedule.json, finetune.json, samples/, metrics.json, *.png, executed notebooks)"

test: venv
	$(PY) -m pytest

# Re-execute the committed notebooks in place with their default parameters (their stored outputs).
notebooks: venv
	rm -rf notebooks/runs
	for nb in notebooks/0*.ipynb; do (cd notebooks && ../$(PY) -m papermill $$(basename $$nb) $$(basename $$nb) --no-progress-bar) || exit 1; done

clean:
	rm -rf runs notebooks/runs
