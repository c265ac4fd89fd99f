# The README's two commands: `make demo` (the main job) and `make test` (every test).
# Each creates and fills the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/demo
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
# Tests run in TEST_WORKERS processes (pytest-xdist), one per core by default; a test file, and the notebooks, each
# stay in one process (tests/conftest.py). TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

.PHONY: venv demo test test-fast lint notebooks site docs results lab browser clean gpu-wheels gpu-site gpu-check gpu-bench

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet --no-deps -e . 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import crs, torch, torchvision, diffusers, cleanfid, papermill, nbval, xdist, matplotlib, jupyterlab, sphinx, myst_nb"
	touch $@

# The main job on the embedded default: the demo experiment (params/demo.yaml: real digits, every stage
# 00-05, the report and the tutorial site) through the batch runner into $(RUN_DIR); rerunning skips stages
# that are up to date.
demo: venv
	$(PY) -m crs run params/demo.yaml --run-dir $(RUN_DIR)
	@echo "demo: results in $(RUN_DIR)/, report at $(RUN_DIR)/report/index.html, site at $(RUN_DIR)/site/index.html"

# Every test. `browser` first: the site's browser test needs Chromium (skipped, saying how to install it, without).
test: venv browser
	$(PY) -m pytest $(PARALLEL)

# The tutorial site of a run (README, "Publish the tutorial"): $(RUN_DIR)/site, then checked in headless Chromium
# when there is one.
site: venv
	$(PY) -m crs publish $(RUN_DIR) $$(command -v chromium >/dev/null && echo --check)

# The documentation site: docs/ (guides, concepts, reference with the API from the docstrings, results) and the
# committed notebooks as the tutorial, into docs/_build/site, checked in headless Chromium when there is one.
docs: venv
	$(PY) -m crs docs $$(command -v chromium >/dev/null && echo --check)

# The results pages and the README's headline table, rendered from the benchmark records (benchmarks/records).
results: venv
	$(PY) -m benchmarks.render

# Study the notebooks in JupyterLab with the project's environment as the kernel (the notebooks' defaults are the
# ones the tests run). Jupyter's data folder is the venv's, so a `python3` kernel of the user's own cannot shadow
# the project's. LAB_ARGS passes options, e.g. LAB_ARGS="--no-browser --port 8890".
lab: venv
	cd notebooks && JUPYTER_DATA_DIR=$(CURDIR)/$(VENV)/share/jupyter ../$(PY) -m jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

# Headless Chromium for the site's browser test (Debian's package; needs root and the package mirror). Best effort:
# without it the browser test is skipped with a message.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "browser: no chromium (apt-get install -y chromium); the site's browser test will be skipped"

# Unit tests only (under a minute on 2 cores): no notebook chains, no batch-runner runs, no multi-process launches, nothing slow.
test-fast: venv
	$(PY) -m pytest $(PARALLEL) tests -m "not slow" --ignore=tests/test_notebooks.py --ignore=tests/test_pipeline.py --ignore=tests/test_distributed.py

# Formatter and linter (ruff, configured in pyproject.toml; tests/test_project.py keeps the tree clean).
lint: venv
	$(PY) -m ruff format crs tests benchmarks
	$(PY) -m ruff check --fix crs tests benchmarks

# Re-execute the committed notebooks in place with their default parameters (their stored outputs). Their figures
# are stored although MPLBACKEND=Agg is exported here: crs.run.plotting.save_figure shows what it saves.
notebooks: venv
	rm -rf notebooks/runs
	for nb in notebooks/0*.ipynb; do (cd notebooks && ../$(PY) -m papermill $$(basename $$nb) $$(basename $$nb) --no-progress-bar) || exit 1; done

# The prepared GPU check (README, "GPU check"), for a CUDA machine without network whose python lacks diffusers,
# papermill and friends: `make gpu-wheels` here fills .whl/ (about 50 MB of cp312 wheels, requirements-gpu.txt);
# carry .whl/ there and run `make gpu-check`: it installs them (no index, no dependency resolution), then runs
# benchmarks.gpu_check: GPU-vs-CPU consistency, every shipped experiment's dry run on cuda, per-stage timings.
GPU_PY ?= python3
GPU_SITE ?= /tmp/crs-gpu-site
GPU_OUT ?= runs/gpu-check
GPU_JOBS ?= 4
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any

gpu-wheels: venv
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 $(GPU_PLATFORMS) -d .whl -r requirements-gpu.txt 2>&1 | grep -v "is ignored" || true
	@ls .whl/*.whl | wc -l | xargs echo "wheels:"; du -sh .whl

gpu-site:
	rm -rf $(GPU_SITE); if [ -d .whl ]; then $(GPU_PY) -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
	  --target $(GPU_SITE) .whl/*.whl || exit 1; fi

GPU_ENV = PYTHONPATH=$(CURDIR):$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

gpu-check: gpu-site
	$(GPU_ENV) $(GPU_PY) -m benchmarks.gpu_check --device cuda --out $(GPU_OUT) --jobs $(GPU_JOBS)

# The quality benchmark on the MNIST 16x16 UNet on a GPU (README, "Measured: schedules against the optimum"):
# trains the UNet into runs/bench/models/mnist16 unless it is there, then searches and judges every schedule.
GPU_BENCH_ARGS ?= --data mnist16
gpu-bench: gpu-site
	$(GPU_ENV) $(GPU_PY) -m benchmarks.bench quality --device cuda $(GPU_BENCH_ARGS) --json $(GPU_OUT)/quality.json

clean:
	rm -rf runs notebooks/runs
