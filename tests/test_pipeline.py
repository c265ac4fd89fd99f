"""The batch runner: params validation, the smoke experiment end to end, resume, failure isolation, sweeps, report."""

import json
import re
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from crs.io import dir_mode, file_mode
from crs.run.experiment import ExperimentError, apply_overrides, load_params, run_experiment, sweep, validate_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "params").glob("*.yaml")))
def test_shipped_params_files_are_valid(name):
    params = load_params(ROOT / "params" / f"{name}.yaml")
    assert params["experiment"] == name and params["run_dir"] == f"runs/{name}"


@pytest.mark.parametrize(
    "raw,msg",
    [
        (
            {"stages": {"rate_estimation": {"meassure": "data"}}},
            r"Unknown key 'meassure' in stage 'rate_estimation' \(01_rate_estimation.ipynb\); valid keys: "
            r"compare_measures, data_free, dataset",
        ),
        (
            {"stages": {"rate_estimaton": {}}},
            r"Unknown stage\(s\) \['rate_estimaton'\]; valid stages: base_model, rate_estimation",
        ),
        ({"common": {"sede": 1}}, "Unknown common key 'sede'; valid common keys: .*seed"),
        ({"experimnt": "x"}, r"Unknown top-level key\(s\) \['experimnt'\]"),
        ({"common": {"run_dir": "elsewhere"}}, "Unknown common key 'run_dir'"),
    ],
)
def test_typos_are_named_before_anything_runs(raw, msg):
    with pytest.raises(ExperimentError, match=msg):
        validate_params(raw)


def test_overrides_are_validated():
    params = load_params(ROOT / "params" / "smoke.yaml")
    assert (
        apply_overrides(params, ["schedule_optimization.xi=1.5", "seed=3"])["stages"]["schedule_optimization"]["xi"]
        == 1.5
    )
    with pytest.raises(ExperimentError, match="Unknown key 'xii' in stage 'schedule_optimization'"):
        apply_overrides(params, ["schedule_optimization.xii=1.5"])
    with pytest.raises(ExperimentError, match="is 'key=value'"):
        apply_overrides(params, ["xi"])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    params = load_params(ROOT / "params" / "smoke.yaml")
    params["run_dir"] = str(tmp_path_factory.mktemp("smoke") / "run")
    records = run_experiment(params, progress=False, log=lambda *_: None)
    return params, records


def test_smoke_chain_writes_every_artifact(smoke):
    params, records = smoke
    run = Path(params["run_dir"])
    assert [r["stage"] for r in records] == [
        "base_model",
        "rate_estimation",
        "schedule_optimization",
        "training_schedule_finetune",
        "sampling",
        "evaluation",
    ]
    for name in (
        "00_base_model.ipynb",
        "05_evaluation.ipynb",
        "rate.json",
        "schedule.json",
        "finetune.json",
        "metrics.json",
        "models/base/config.json",
        "models/crs/config.json",
        "samples/index.json",
    ):
        assert (run / name).exists(), name
    # finetune_seeds [1]: a second (CRS, control) pair, and CRS training judged over both seeds
    assert (run / "models" / "crs-s1" / "config.json").exists() and (run / "models" / "control-s1").is_dir()
    model_comps = json.loads((run / "metrics.json").read_text())["model_comparisons"]
    assert model_comps and all(c["runs"] == 2 and len(c["diffs"]) == 2 for c in model_comps)
    assert all(c["covers"].startswith("training runs (2 seeds per model)") for c in model_comps)
    # every figure a notebook saves is shown in its executed output, though the tests export MPLBACKEND=Agg
    from crs.run.publish import figure_outputs

    shown = 0
    for nb in sorted(run.glob("0*_*.ipynb")):
        rows = figure_outputs(nb)
        assert rows and all(r["found"] >= r["expected"] for r in rows), (nb.name, rows)
        shown += sum(r["found"] for r in rows)
    assert shown >= len(list(run.glob("*.png")))  # each figure saved in the run folder is shown too
    rate = json.loads((run / "rate.json").read_text())
    assert rate["meta"]["model"] == "models/base" and rate["evaluations"] == 17 * 512  # the trained model was measured
    assert "/" not in json.dumps(
        json.loads((run / "01_rate_estimation.ipynb").read_text())["metadata"]["papermill"]["parameters"]["run_dir"]
    )
    # every file and folder has the mode a plain write gives (0644 and 0755 under umask 022), none mkstemp's 0600
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}
    assert {
        str(p.relative_to(run)): m for p, m in modes.items() if m != (dir_mode() if p.is_dir() else file_mode())
    } == {}


def test_site_of_the_smoke_run_in_a_browser(smoke, tmp_path):
    """The tutorial site (crs.run.publish) of the smoke run: built offline, every page opened from disk in headless
    Chromium. Formulas typeset (none left raw outside code), every figure loads, every link inside the site
    resolves (the only links out are to arXiv and the theme's credits)."""
    from crs.run.publish import CHROMIUM_HINT, browser_check, build_site, figure_outputs, find_chromium

    params, _ = smoke
    run = Path(params["run_dir"])
    index = build_site(run, tmp_path / "site", log=lambda *_: None)
    site = index.parent
    stems = [nb.stem for nb in sorted(run.glob("0*_*.ipynb"))]
    assert len(stems) == 6 and all((site / f"{s}.html").is_file() for s in stems)
    landing = index.read_text()
    assert "Summary: CRS against the best baseline" in landing and "<table" in landing
    assert (site / "_static" / "mathjax" / "tex-svg.js").is_file()
    for page in site.glob("*.html"):  # nothing is fetched from the network: every script is in the folder
        assert not re.search(r'<script[^>]+src="(https?:)?//', page.read_text()), page.name
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium for the browser check: {CHROMIUM_HINT}")
    result = browser_check(site, chromium)
    pages = {Path(p["page"]).stem: p for p in result["pages"]}
    assert set(stems) | {"index"} <= set(pages)
    for name, page in pages.items():
        assert page["raw_math"] == 0 and page["mathjax_errors"] == 0, (name, page)
        assert page["typeset"] >= page["formulas"], (name, page)
        assert page["broken_images"] == [], (name, page)
    assert sum(p["formulas"] for p in pages.values()) >= 20  # the stages' and the landing page's formulas
    for stem in stems:  # every figure a stage saved is on its page
        assert pages[stem]["images"] >= sum(r["expected"] for r in figure_outputs(run / f"{stem}.ipynb")), stem
    assert pages["index"]["images"] >= 3
    assert result["dead_links"] == []
    assert all(link.startswith("https://") for link in result["external_links"])


def test_second_run_skips_every_stage(smoke):
    params, _ = smoke
    records = run_experiment(params, progress=False, log=lambda *_: None)
    assert all(r["skipped"] for r in records)
    # a changed parameter reruns that stage and everything downstream, not upstream
    changed = apply_overrides(params, ["evaluation.n_boot=21"])
    records = run_experiment(changed, progress=False, log=lambda *_: None)
    assert [r["skipped"] for r in records] == [True] * 5 + [False]


def test_a_changed_artifact_is_noticed_and_its_stage_reruns_with_those_after_it(smoke, tmp_path, capsys):
    from crs.__main__ import main

    params, _ = smoke
    run = tmp_path / "run"
    shutil.copytree(params["run_dir"], run)
    params = dict(params, run_dir=str(run))
    outputs = json.loads((run / ".stages" / "schedule_optimization.json").read_text())["outputs"]
    assert set(outputs) == {"schedule.json"} and set(outputs["schedule.json"]) == {"size", "sha256"}
    (run / "schedule.json").write_text("garbage")
    smoke_yaml = str(ROOT / "params" / "smoke.yaml")
    message = (
        "schedule.json (written by schedule_optimization) changed since that stage ran: rerun that stage "
        "(--stages schedule_optimization,training_schedule_finetune,sampling) or the whole experiment."
    )
    assert main(["check", smoke_yaml, "--run-dir", str(run), "--stages", "sampling"]) == 2
    assert message in capsys.readouterr().err
    sampled = (run / "04_sampling.ipynb").stat().st_mtime_ns
    with pytest.raises(ExperimentError, match=re.escape(message)):  # refused before any stage runs
        run_experiment(params, stages=["sampling"], progress=False, log=lambda *_: None)
    assert (run / "04_sampling.ipynb").stat().st_mtime_ns == sampled
    assert main(["check", smoke_yaml, "--run-dir", str(run)]) == 0
    assert "[schedule_optimization] schedule.json (written by schedule_optimization) changed" in capsys.readouterr().out
    records = run_experiment(params, progress=False, log=lambda *_: None)
    assert [r["skipped"] for r in records] == [True, True, False, False, False, False]
    assert json.loads((run / "schedule.json").read_text())["xi"] == 1.0
    shutil.rmtree(run / "search")  # a vanished folder of a stage's outputs
    with pytest.raises(ExperimentError, match=r"search/.* \(written by sampling\) vanished since that stage ran"):
        run_experiment(params, stages=["evaluation"], progress=False, log=lambda *_: None)


def test_a_record_from_before_output_hashes_is_checked_by_parsing(smoke, tmp_path):
    from crs.run.experiment import changed_outputs

    params, _ = smoke
    run = tmp_path / "run"
    shutil.copytree(params["run_dir"], run, ignore=shutil.ignore_patterns("samples", "search"))
    for path in (run / ".stages").glob("*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in record.items() if k != "outputs"}))
    assert changed_outputs(run, ["rate_estimation", "schedule_optimization"]) == {}
    (run / "rate.json").write_text("{")
    assert changed_outputs(run, ["rate_estimation", "schedule_optimization"]) == {
        "rate_estimation": "rate.json (written by rate_estimation) is not valid JSON"
    }
    shutil.rmtree(run / "models" / "base")
    with pytest.raises(ExperimentError, match=r"models/base \(written by base_model\) is missing: rerun that stage"):
        changed_outputs(run, ["rate_estimation"])


def test_a_failing_stage_leaves_the_others_intact_and_resumes(smoke, tmp_path):
    params, _ = smoke
    run = tmp_path / "run"
    shutil.copytree(params["run_dir"], run)
    params = dict(params, run_dir=str(run))
    before = {
        p: (run / p).read_bytes()
        for p in ("rate.json", "schedule.json", "metrics.json", "models/crs/diffusion_pytorch_model.safetensors")
    }
    typo = apply_overrides(params, ["sampling.samplers=[euler, ddim]"])  # a bad value: refused before any stage runs
    with pytest.raises(ExperimentError, match=r"Stage 'sampling' \(04_sampling.ipynb\): Unknown sampler 'ddim'"):
        run_experiment(typo, progress=False, log=lambda *_: None)
    assert json.loads((run / ".stages" / "sampling.json").read_text())["status"] == "ok"  # not even recorded as run
    bad = apply_overrides(params, ["sampling.schedule=missing.json"])  # found only when the stage runs
    with pytest.raises(
        ExperimentError, match="Stage 'sampling' failed: ValueError: No schedule file at 'missing.json'"
    ):
        run_experiment(bad, progress=False, log=lambda *_: None)
    assert {p: (run / p).read_bytes() for p in before} == before
    assert json.loads((run / ".stages" / "sampling.json").read_text())["status"] == "failed"
    records = run_experiment(params, progress=False, log=lambda *_: None)
    # the failed stage reruns; its successor reruns unless its record already matches these parameters (it does when
    # this test runs alone, not after test_second_run_skips_every_stage changed evaluation.n_boot in the shared run)
    assert [r["skipped"] for r in records][:5] == [True] * 4 + [False]


def test_subset_of_stages_and_report(smoke, tmp_path):
    from crs.run.report import build_report

    params, _ = smoke
    records = run_experiment(params, stages=["schedule_optimization"], progress=False, log=lambda *_: None)
    assert [r["stage"] for r in records] == ["schedule_optimization"]
    index = build_report(params["run_dir"])
    page = index.read_text()
    assert "05_evaluation.html" in page and "CRS against the best baseline" in page and "<table>" in page
    assert (index.parent / "05_evaluation.html").stat().st_size > 10_000 and (index.parent / "crs_ratio.png").exists()


def test_a_run_ends_with_where_things_are(smoke, capsys):
    from crs.__main__ import main

    params, _ = smoke
    run = params["run_dir"]
    smoke_yaml = str(ROOT / "params" / "smoke.yaml")
    assert main(["run", smoke_yaml, "--run-dir", run, "--stages", "base_model", "--no-report"]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("\n\nrun folder: ") + 2 :].splitlines()  # the last lines, after a blank one
    assert tail[:3] == [
        f"run folder: {run}",
        f"metrics:    {run}/metrics.json",
        f"summary:    python -m crs summary {run}",
    ]
    for name in ("report", "site"):  # named only when built
        assert (f"{name + ':':<11} {run}/{name}/index.html" in tail) == (Path(run) / name / "index.html").is_file()


def test_sweep_runs_one_folder_per_value_with_a_summary(smoke, tmp_path):
    """A sweep over an evaluation setting (only stage 05 reruns per value: the claim needs no retraining), each
    value in its own folder that starts from the base run, and a summary of every value."""
    params, _ = smoke
    base = tmp_path / "run"
    shutil.copytree(params["run_dir"], base)
    scored = apply_overrides(params, ["evaluation.metrics=[precision, teacher_error]"])  # k moves precision
    rows = sweep(dict(scored, run_dir=str(base)), "evaluation.k", [2, 5], log=lambda *_: None)
    assert [r["value"] for r in rows] == [2, 5]
    assert all(r["comparisons"] > 0 for r in rows)
    folders = [base / "sweep" / f"evaluation.k={k}" for k in (2, 5)]
    metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
    params_05 = [
        json.loads((f / "05_evaluation.ipynb").read_text())["metadata"]["papermill"]["parameters"] for f in folders
    ]
    assert [p["k"] for p in params_05] == [2, 5]
    precision = [
        {
            (r["model"], r["schedule"], r["sampler"], r["nfe"]): r["value"]
            for r in m["rows"]
            if r["metric"].startswith("precision")
        }
        for m in metrics
    ]
    assert precision[0] and precision[0] != precision[1]  # k changes the precision estimate
    for f in folders:  # the stages before evaluation were taken from the base run, not rerun
        assert (f / "schedule.json").read_bytes() == (base / "schedule.json").read_bytes()
    assert json.loads((base / "sweep" / "summary_evaluation.k.json").read_text()) == rows


def test_the_stage_kernels_run_encrypted_without_the_tcp_warning(tmp_path, capfd):
    """A kernel started over TCP without keys warns on stderr; the runner's kernels get CurveZMQ keys instead."""
    import nbformat
    import papermill

    from crs.run.experiment import _kernel_options

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nbformat.write(nb, tmp_path / "in.ipynb")
    out = tmp_path / "out.ipynb"
    options = dict(kernel_name="python3", progress_bar=False)
    papermill.execute_notebook(tmp_path / "in.ipynb", out, **options, **_kernel_options())
    assert nbformat.read(out, as_version=4).cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err


def test_cli(tmp_path, capsys):
    from crs.__main__ import main

    assert main(["check", str(ROOT / "params" / "smoke.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": {"sampling": {"sampler": ["euler"]}}}))
    assert main(["run", str(bad), "--run-dir", str(tmp_path / "x")]) == 2
    assert "Unknown key 'sampler' in stage 'sampling'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing ran
