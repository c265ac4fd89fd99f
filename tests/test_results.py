"""Measured results are generated, never typed: benchmark records (benchmarks/records) and the pages rendered from
them (docs/results, the README's headline table)."""

import json
import math

import pytest

from benchmarks import render
from benchmarks.bench import main as bench_main
from benchmarks.records import PROVENANCE, load_records, write_record
from benchmarks.tables import TABLES


def test_every_record_names_its_command_commit_machine_and_date():
    records = load_records()
    for name, record in records.items():
        assert set(PROVENANCE) <= set(record), name
        assert record["command"].startswith(".venv/bin/python -m benchmarks."), name
        assert record["commit"] and record["date"] and record["machine"]["label"], name
        assert record["benchmark"] in TABLES, name


def test_every_results_page_and_the_readme_headline_match_their_records():
    """`python -m benchmarks.render` has been run since the records last changed: nothing typed by hand survives."""
    assert render.stale() == [], "run `.venv/bin/python -m benchmarks.render`"


def test_a_benchmark_run_writes_a_record_that_renders_with_its_provenance(tmp_path, monkeypatch, capsys):
    """A real (tiny) benchmark run: its record has the command that reproduces it, and its page shows the table the
    command printed, with the machine and commit; a changed figure makes the page stale."""
    monkeypatch.setattr("benchmarks.records.RECORDS", tmp_path)
    bench_main(["rate", "--repeats", "1", "--record-name", "toy"])  # about a second
    printed = capsys.readouterr().out
    (record,) = load_records(tmp_path).values()
    assert record["command"] == ".venv/bin/python -m benchmarks.bench rate --repeats 1 --record-name toy"
    table = TABLES["rate"](record["result"])
    assert table in printed
    page = render.render_page("costs", {"rate": dict(record, name="rate")})
    assert table in page and record["commit"] in page and record["machine"]["label"] in page
    assert "No record yet (`benchmarks/records/training.json`)" in page

    edited = json.loads(json.dumps(record))
    edited["result"][0]["seconds"] *= 2
    assert render.render_page("costs", {"rate": edited}) != page


def test_records_missing_provenance_are_refused(tmp_path):
    write_record("ok", "training", [], ["benchmarks.bench", "training"], 1.0, folder=tmp_path)
    doc = json.loads((tmp_path / "ok.json").read_text())
    del doc["commit"]
    (tmp_path / "ok.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"ok.json lacks \['commit'\]"):
        load_records(tmp_path)


def test_a_gpu_check_record_renders_on_the_gpu_page(tmp_path):
    """The GPU check's record (written on a GPU machine) lands on docs/results/gpu.md with its device."""
    report = {
        "environment": {"python": "3.12", "torch": "2.11", "device": "cuda", "gpu": "NVIDIA H100", "bf16": True},
        "consistency": [{"case": "denoiser mlp", "difference": 4e-9, "tolerance": 1e-4, "ok": True, "why": "f32"}],
        "consistency_seconds": 20.0,
        "seconds": 400.0,
        "dry_runs": [{"experiment": "smoke", "ok": True, "stages": {"sampling": {"seconds": 31.1}}, "seconds": 90.0}],
    }
    write_record("gpu-check-nvidia-h100", "gpu-check", report, ["benchmarks.gpu_check"], 400.0, folder=tmp_path)
    page = render.render_page("gpu", load_records(tmp_path))
    assert "NVIDIA H100, bf16 yes" in page and "| denoiser mlp | 4.00e-09 | 1e-04 | yes |" in page
    assert "No record yet" not in page


def test_the_guidance_benchmark_judges_each_rate_on_the_guided_ode():
    """At toy size: every cell has the three CRS variants (two at w = 1), the baselines and the optimum, and the
    ratios it reports are those of the values it reports (the ratio of RMS teacher errors)."""
    from benchmarks.bench import GUIDANCE_BASELINES, guidance_table

    result = guidance_table(scales=(1.0, 3.0), n=32, nfe={"euler": [5]}, n_boot=50)
    assert [(c["w"], c["sampler"], c["nfe"]) for c in result["cells"]] == [(1.0, "euler", 5), (3.0, "euler", 5)]
    one, three = result["cells"]
    assert set(one["values"]) == {"crs w=0", "crs w=1", "optimal", *GUIDANCE_BASELINES}
    assert set(three["values"]) == set(one["values"]) | {"crs w=3"}
    v = three["values"]
    ratio, lo, hi = three["target_vs_w1"]
    assert math.isclose(ratio, v["crs w=3"] / v["crs w=1"], rel_tol=1e-9) and lo <= ratio <= hi
    assert three["best_baseline"] == min(GUIDANCE_BASELINES, key=v.get)
    assert "| 3 | euler | 5 |" in TABLES["guidance"](result)


def test_the_datafree_benchmark_compares_the_two_schedules_with_a_control():
    """At toy size on the mixture: each cell compares the data-free schedule and the control (the dataset's rate
    from other draws) with the dataset's, and its ratios are those of the values it reports."""
    from benchmarks.bench import datafree_table

    result = datafree_table(
        "gmm",
        measures=("data",),
        nfe={"euler": [5]},
        pool=64,
        pool_steps=8,
        grid_size=4,
        n_samples=32,
        n_eval=32,
        teacher_steps=32,
        n_boot=20,
    )
    (row,) = result["rows"]
    assert set(row["teacher_error"]) == {"dataset", "data-free", "dataset, seed + 1"}
    te = row["teacher_error"]
    assert math.isclose(row["teacher_ratio"][0], te["data-free"] / te["dataset"], rel_tol=1e-9)
    assert math.isclose(row["control_ratio"][0], te["dataset, seed + 1"] / te["dataset"], rel_tol=1e-9)
    assert row["log_sigma_gap"] > 0 and row["control_gap"] > 0  # other samples, other estimates
    assert result["pool"]["n"] == 64 and result["pool"]["evaluations"] > 0
    assert "| data | euler | 5 |" in TABLES["datafree"](result)
