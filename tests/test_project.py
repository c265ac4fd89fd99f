"""The project's own set-up: one set of pins, the README's commands, CI, clean committed notebooks."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return {
        m.group(1).lower(): m.group(2) for line in lines if (m := re.match(r"^\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line))
    }


def test_environment_yml_agrees_with_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == req
    assert "python=3.11" in env["dependencies"]


def test_gpu_wheels_agree_with_requirements():
    """The GPU check's wheels carry the same versions of what both lists name."""
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    gpu = _pins((ROOT / "requirements-gpu.txt").read_text().splitlines())
    shared = set(req) & set(gpu)
    assert {"diffusers", "papermill", "ipykernel", "scikit-learn", "mlxtend", "clean-fid"} <= shared
    assert {name: gpu[name] for name in shared} == {name: req[name] for name in shared}
    # the GPU machine has its own; its transformers (imported by diffusers through peft) refuses huggingface-hub 2.x
    assert not {"torch", "torchvision", "numpy", "scipy", "huggingface-hub"} & set(gpu)


def test_the_tree_is_formatted_and_lint_clean():
    """ruff (configured in pyproject.toml, line length 120): `make lint` fixes what this finds."""
    import subprocess
    import sys

    for args in (["format", "--check"], ["check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "crs", "tests", "benchmarks"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_named_package_is_pinned():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    for name in ("jupyterlab", "papermill", "torch", "diffusers", "clean-fid", "matplotlib", "nbval", "torchvision"):
        assert name in req, name


def test_readme_commands_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: venv browser\n\t\$\(PY\) -m pytest \$\(PARALLEL\)$", makefile, re.M)  # every test
    # PARALLEL only spreads the tests over processes (pytest-xdist), never selects fewer
    parallel = re.search(r"^PARALLEL := (.*)$", makefile, re.M).group(1)
    assert parallel == "$(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))"


def test_committed_notebooks_are_clean():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.kernelspec.name == "python3" and nb.metadata.language_info.name == "python"
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{path.name}: one cell tagged 'parameters'"
        text = path.read_text()
        assert not re.search(r'"/(root|tmp|work|home)/', text), f"{path.name}: machine path in outputs"
        assert '"output_type": "error"' not in text
        assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), f"{path.name}: not executed"
        assert "def " not in "".join(c.source for c in nb.cells if c.cell_type == "code"), "no functions in notebooks"


def test_committed_notebooks_show_every_figure_they_save():
    """Each cell that saves figures shows them too (the notebooks set `%matplotlib inline`, so a run under
    MPLBACKEND=Agg, as make and the tests export, still stores them)."""
    from crs.run.publish import figure_outputs

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        rows = figure_outputs(path)
        assert rows and all(r["found"] >= r["expected"] for r in rows), (path.name, rows)
        assert "%matplotlib inline" in path.read_text(), path.name


def test_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    """Every Python block of the README's quick start, as written, in an empty folder (offline: the diffusers
    block builds its own tiny pipeline)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert "teacher error: CRS " in capsys.readouterr().out
    assert (tmp_path / "schedule.json").is_file() and (tmp_path / "tiny-schedule.json").is_file()


def test_readme_is_a_front_door():
    """At most 12 KB, the quick start on the first screen, a table of contents; no test counts or timings."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    assert readme.index("## Quick start") < readme.index("## The two commands")
    assert "**Contents**" in readme.split("## Install")[0]
    assert "## Quick start" in "\n".join(readme.splitlines()[:40])
    assert not re.search(r"\b\d+ tests\b|\d+ min \d+ s", readme)


def test_links_in_the_readme_and_docs_lead_somewhere():
    """Every relative Markdown link of README.md, CHANGELOG.md and docs/ names a file that exists (and an anchor of
    the README one of its headings)."""
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")]
    pages = [p for p in pages if "_build" not in p.parts]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            if path:
                assert (page.parent / path).exists(), f"{page.relative_to(ROOT)}: dead link {target}"
            elif page.name == "README.md":
                slugs = {
                    re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                    for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)
                }
                assert anchor in slugs, f"README.md: dead anchor #{anchor}"


def test_rate_cost_benchmark_meets_its_target():
    from benchmarks.bench import rate_cost_table

    rows = rate_cost_table(repeats=1)
    assert [r["measure"] for r in rows] == ["fid", "data", "noise", "data+cosine"]
    assert all(r["evaluations"] + r["feature_evaluations"] == 65 * 4096 for r in rows)
    assert all(r["seconds"] < 2.0 for r in rows), rows  # the README's target


def test_notebook_parameters_are_inspectable(caplog):
    """papermill must parse every parameter (issue 5 validates params files against this list)."""
    import papermill

    expected = {
        "01_rate_estimation.ipynb": {
            "run_dir",
            "seed",
            "dataset",
            "dataset_kwargs",
            "model",
            "guidance",
            "prompts",
            "data_free",
            "measure",
            "compare_measures",
            "sigma_min",
            "sigma_max",
            "grid_size",
            "n_samples",
            "features",
            "device",
            "progress",
        },
        "02_schedule_optimization.ipynb": {"run_dir", "xi", "steps", "smoothing", "baselines", "diagnostic_steps"},
        "00_base_model.ipynb": {
            "run_dir",
            "seed",
            "dataset",
            "dataset_kwargs",
            "model",
            "model_kwargs",
            "precond",
            "sigma_data",
            "sigma_min",
            "sigma_max",
            "train_steps",
            "batch_size",
            "lr",
            "ema_decay",
            "noise",
            "label_dropout",
            "checkpoint_every",
            "sample_steps",
            "n_show",
            "progress",
        },
        "03_training_schedule_finetune.ipynb": {
            "run_dir",
            "seed",
            "dataset",
            "dataset_kwargs",
            "base_model",
            "schedule",
            "crs_noise",
            "control_noise",
            "finetune_steps",
            "batch_size",
            "lr",
            "ema_decay",
            "checkpoint_every",
            "online_every",
            "online_measure",
            "online_grid",
            "online_samples",
            "xi",
            "eval_levels",
            "eval_samples",
            "num_processes",
            "finetune_seeds",
            "progress",
        },
        "04_sampling.ipynb": {
            "run_dir",
            "seed",
            "dataset",
            "dataset_kwargs",
            "models",
            "schedule",
            "baselines",
            "samplers",
            "nfe",
            "n_samples",
            "batch_size",
            "device",
            "num_processes",
            "store",
            "features",
            "keep",
            "show_sampler",
            "search",
            "search_options",
            "search_models",
            "guidance",
            "prompts",
            "labels",
            "progress",
        },
        "05_evaluation.ipynb": {
            "run_dir",
            "seed",
            "dataset",
            "dataset_kwargs",
            "features",
            "device",
            "metrics",
            "n_boot",
            "escalate",
            "n_reference",
            "reference",
            "num_processes",
            "k",
            "plot_model",
            "teacher_steps",
            "progress",
        },
    }
    for name, params in expected.items():
        found = papermill.inspect_notebook(str(ROOT / "notebooks" / name))
        assert set(found) == params, name
    assert "Unable to parse" not in caplog.text


def test_training_benchmarks_run():
    from benchmarks.bench import online_overhead_table, training_speed_table

    rows = training_speed_table(steps=3, warmup=1, cases=[("MLP", "gmm", {}, 32), ("UNet", "digits", {}, 4)])
    assert [r["model"] for r in rows] == ["MLP", "UNet"] and all(r["steps_per_second"] > 0 for r in rows)
    (row,) = online_overhead_table([("MLP", "gmm", {}, 32, 20, 10, 4, 32)])
    assert row["updates"] == 2 and row["overhead"] > 0


def test_references_to_the_method_note_point_inside_the_repository():
    """Docstrings, tests and the README cite docs/method.md by section; every cited section exists."""
    note = (ROOT / "docs" / "method.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", note, re.M))
    cited = []
    for path in [
        *ROOT.rglob("crs/**/*.py"),
        *ROOT.glob("tests/*.py"),
        ROOT / "README.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("notebooks/*.ipynb"),
    ]:
        text = path.read_text()
        assert "crs-" + "method.md" not in text, f"{path.name} cites a file outside the repository"
        cited += re.findall(r"docs/method\.md`{0,2} section (\d+)", text)
    assert cited and set(cited) <= sections


def test_the_engine_never_imports_the_orchestration_nor_private_names():
    """crs/*.py is the method (tensors and objects in and out); crs/run/ runs experiments. Imports go one way."""
    import ast

    for path in sorted(ROOT.glob("crs/**/*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crs"):
                names = [a.name for a in node.names]
                assert not any(n.startswith("_") for n in names), (
                    f"{path.name} imports private {names} from {node.module}"
                )
                if path.parent.name == "crs" and path.name != "__main__.py":
                    assert not node.module.startswith("crs.run") and "run" not in names, (
                        f"{path.name} imports {node.module}"
                    )
            if isinstance(node, ast.Import) and path.parent.name == "crs" and path.name != "__main__.py":
                assert not any(a.name.startswith("crs.run") for a in node.names), path.name


def test_pyproject_declares_a_small_core_and_extras_that_cover_the_lock():
    """`pip install crs` needs only torch, numpy, scipy and tqdm; every package pinned in requirements.txt (the lock
    `make venv` installs) is in the core or an extra, and its pinned version satisfies the declared range."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    assert sorted(r.name for r in core) == ["numpy", "scipy", "torch", "tqdm"]
    declared = {r.name.lower(): r for r in core}
    for extra in project["optional-dependencies"].values():
        declared.update({(r := Requirement(text)).name.lower(): r for text in extra if not text.startswith("crs[")})
    for name, version in _pins((ROOT / "requirements.txt").read_text().splitlines()).items():
        assert name in declared, f"{name} is pinned in requirements.txt but in no extra of pyproject.toml"
        assert declared[name].specifier.contains(version), (name, version, str(declared[name].specifier))


NO_EXTRAS = """
import sys
for name in ("diffusers", "accelerate", "cleanfid", "torchvision", "sklearn", "mlxtend", "matplotlib", "papermill",
             "yaml", "jupyterlab", "myst_nb", "nbformat", "huggingface_hub", "safetensors", "PIL"):
    sys.modules[name] = None  # importing any of them now fails, as in an environment without the extras
import crs
data = crs.make_dataset("gmm")
rate = crs.estimate_rate("data", data, denoiser=data.denoiser, grid_size=16, n_samples=256, seed=0)
sigmas = crs.optimize_schedule(rate, xi=1.0).discretize(6)
err = crs.teacher_error(data.denoiser, data, "dpmpp_2m", sigmas, n=64, seed=0, steps=32)
found = crs.search_schedule("gits", data.denoiser, data, "euler", nfe=5, seed=0, n=32, teacher_steps=32, grid=12)
x = crs.sampling.generate(data.denoiser, data.shape, 8, found.sigmas, sampler="euler")
print("engine ok", x.shape[0])
"""


def test_the_engine_works_without_the_extras():
    """The core dependencies alone give a working engine: rate, schedule, teacher error, search and sampling on the
    analytic mixture in a process where the extras' packages cannot be imported."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", NO_EXTRAS], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "engine ok 8" in done.stdout, done.stderr[-3000:]


def test_notebook_code_fits_the_page():
    """Every code line of the committed notebooks fits 100 columns (the site and JupyterLab show it without
    scrolling sideways); parameter cells keep each comment on its own line above the value."""
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                long = [line for line in cell.source.splitlines() if len(line) > 100]
                assert not long, f"{path.name}: {long[0][:60]}..."
