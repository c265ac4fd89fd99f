"""A one-page report: ``run_dir/report/index.html``.

It links every executed notebook of the run (to its page of the tutorial site, ``run_dir/site``, when that is
built: :mod:`crs.run.publish`; otherwise to a copy converted with nbconvert), shows the summary table of CRS
against the best baseline (from ``metrics.json``) and the main figures.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from crs.io import atomic_write_bytes
from crs.run.jobs import entry_key

__all__ = [
    "FIGURES",
    "build_report",
    "intervals_note",
    "optimum_markdown",
    "ratios_to_optimal",
    "summary_markdown",
    "summary_table",
    "training_markdown",
    "training_table",
]

FIGURES = [
    ("rate.png", "Velocity of each measure against logsnr (01)"),
    ("schedules.png", "CRS and baseline sampling schedules (02)"),
    ("step_discrepancy.png", "Per-step discrepancy: CRS steps are equal (02)"),
    ("finetune_noise_density.png", "Training noise-level distributions: CRS and control (03)"),
    ("finetune_heldout_loss.png", "Held-out loss at fixed noise levels after fine-tuning (03)"),
    ("samples.png", "Samples under every schedule at the smallest budget (04)"),
    ("crs_ratio.png", "CRS against the best baseline at each nfe (05)"),
    ("teacher_error.png", "Teacher error against nfe, with the optimum as the floor (05)"),
]


def summary_table(metrics: dict, metrics_shown: tuple[str, ...] | None = None) -> list[dict]:
    """Rows of the summary: one per comparison of the headline metrics (NLL for analytic data, FID)."""
    comps = metrics.get("comparisons", [])
    names = list(dict.fromkeys(c["metric"] for c in comps))
    shown = metrics_shown or tuple(m for m in names if m == "nll" or m.startswith("fid_"))
    return [c for c in comps if c["metric"] in shown]


def _verdict(c: dict) -> str:
    """The verdict; ``(edge)`` marks one still within Monte Carlo error of flipping after its extra replicates
    (:func:`crs.metrics.paired_interval`): another bootstrap seed could turn it."""
    verdict = ("CRS better" if c["crs_better"] else "CRS worse") if c["significant"] else "not significant"
    return verdict + (" (edge)" if c.get("edge") else "")


def _against_all(c: dict) -> str:
    """``better / worse than (of K)``: the baselines the CRS schedule is significantly better or worse than."""
    if "n_baselines" not in c:
        return ""
    return f"{len(c['better_than'])} / {len(c['worse_than'])} of {c['n_baselines']}"


def intervals_note(metrics: dict) -> str:
    """One sentence on what the intervals of a ``metrics.json`` are and what they cover."""
    info = metrics.get("intervals")
    if not info:
        return f"{metrics.get('n_boot')} bootstrap replicates (an older metrics.json: interval method not recorded)."
    edge = f" Edge verdicts: {info['edge']}; marked (edge)." if "edge" in info else ""
    return (
        f"Intervals: {info['rows']}; {info['n_boot']} replicates. Comparisons: {info['comparisons']}.{edge} "
        "They cover sampling variance only: not training randomness, nor the choice of reference set."
    )


def summary_markdown(metrics: dict) -> str:
    """The summary table as Markdown (for the README): ``python -m crs summary RUN_DIR``."""
    lines = [
        "| model | sampler | nfe | metric | CRS schedule | best baseline | ratio | paired CI of the difference "
        "(Bonferroni) | verdict | sig. better / worse than |",
        "|---|---|---:|---|---|---|---:|---|---|---|",
    ]
    for c in summary_table(metrics):
        ratio = "" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append(
            f"| {entry_key(c)} | {c['sampler']} | {c['nfe']} | {c['metric']} | {c['crs']} {c['crs_value']:.4g} | "
            f"{c['best_baseline']} "
            f"{c['baseline_value']:.4g} | {ratio} | [{c['diff_ci_low']:.3g}, {c['diff_ci_high']:.3g}] | {_verdict(c)} "
            f"| {_against_all(c)} |"
        )
    lines += ["", intervals_note(metrics)]
    training = training_markdown(metrics)
    if training:
        lines += ["", "CRS training against the control (the same schedule for both models):", "", training]
    optimum = optimum_markdown(metrics)
    if optimum:
        lines += ["", "Teacher error as a ratio to the optimum (`optimal`; 1 is the best schedule of that budget):", ""]
        lines.append(optimum)
    return "\n".join(lines)


def training_table(metrics: dict, schedule: str = "crs") -> tuple[list[dict], dict]:
    """The CRS-trained model against the control on the headline metrics, sampled with ``schedule``, and counts
    over every schedule: ``(rows, {"cells", "better", "worse", "runs"})``."""
    comps = metrics.get("model_comparisons", [])
    names = list(dict.fromkeys(c["metric"] for c in comps))
    shown = tuple(m for m in names if m == "nll" or m.startswith("fid_"))
    headline = [c for c in comps if c["metric"] in shown]
    counts = dict(
        cells=len(headline),
        better=sum(c["significant"] and c["crs_better"] for c in headline),
        worse=sum(c["significant"] and not c["crs_better"] for c in headline),
        edge=sum(bool(c.get("edge")) for c in headline),
        runs=sorted({c["runs"] for c in headline}),
    )
    return [c for c in headline if c["schedule"] == schedule], counts


def training_markdown(metrics: dict) -> str:
    """:func:`training_table` as Markdown, or "" when the run compared no CRS-trained model with a control."""
    rows, counts = training_table(metrics)
    if not counts["cells"]:
        return ""
    guided = any("guidance" in c for c in rows)  # a conditional model sampled at several guidance scales
    lines = [
        "| " + ("guidance | " if guided else "") + "sampler | nfe | metric | runs | CRS-trained | control | "
        "95 % CI of the difference | verdict | covers |",
        "|" + ("---:|" if guided else "") + "---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for c in rows:
        lines.append(
            "| "
            + (f"{c['guidance']:g} | " if guided else "")
            + f"{c['sampler']} | {c['nfe']} | {c['metric']} | {c['runs']} | {c['crs_value']:.4g} | "
            f"{c['control_value']:.4g} | [{c['diff_ci_low']:.3g}, {c['diff_ci_high']:.3g}] | {_verdict(c)} | "
            f"{c['covers']} |"
        )
    lines += [
        "",
        f"Over every schedule ({counts['cells']} cells of the headline metrics): the CRS-trained model is "
        f"significantly better in {counts['better']} and worse in {counts['worse']}"
        + (f"; {counts['edge']} verdicts are at the edge." if counts["edge"] else "."),
    ]
    return "\n".join(lines)


def ratios_to_optimal(metrics: dict, metric: str = "teacher_error", optimum: str = "optimal") -> list[dict]:
    """Every schedule's ``metric`` as a ratio to the ``optimum`` schedule's, per model, sampler and nfe.

    Returns:
        One dict per cell that has the optimum: ``model``, ``sampler``, ``nfe``, ``optimum`` (its value),
        ``ratios`` (``{schedule: ratio}``), ``kinds`` (``{schedule: kind}``, the rows' roles,
        :func:`crs.run.jobs.kind_of`), ``best_baseline`` (the fixed baseline, kind ``baseline``, with the smallest
        value).
    """
    from crs.run.jobs import kind_of

    cells: dict[tuple, dict[str, tuple[float, str]]] = {}
    for r in metrics.get("rows", []):
        if r["metric"] == metric:
            cells.setdefault((entry_key(r), r["sampler"], r["nfe"]), {})[r["schedule"]] = (r["value"], kind_of(r))
    out = []
    for (model, sampler, nfe), found in cells.items():
        values = {s: v for s, (v, _) in found.items()}
        if not values.get(optimum):
            continue
        fixed = [s for s, (_, kind) in found.items() if kind == "baseline"]
        out.append(
            dict(
                model=model,
                sampler=sampler,
                nfe=nfe,
                optimum=values[optimum],
                ratios={s: v / values[optimum] for s, v in values.items()},
                kinds={s: kind for s, (_, kind) in found.items()},
                best_baseline=min(fixed, key=values.get) if fixed else None,
            )
        )
    return out


def optimum_markdown(metrics: dict) -> str:
    """Teacher error as a ratio to ``optimal`` per cell (Markdown), or "" when the run searched no optimum: the best
    fixed baseline, then each CRS schedule (``crs`` first) and each searched peer but the optimum, by ``kind``."""
    cells = ratios_to_optimal(metrics)
    if not cells:
        return ""
    of_kind = {k: {s for c in cells for s, kind in c["kinds"].items() if kind == k} for k in ("crs", "peer")}
    shown = ["crs"] + sorted(of_kind["crs"] - {"crs"}) + sorted(of_kind["peer"] - {"optimal"})
    lines = [
        "| model | sampler | nfe | optimal (teacher error) | best baseline | " + " | ".join(shown) + " |",
        "|---|---|---:|---:|---|" + "---:|" * len(shown),
    ]
    for c in cells:
        best = f"{c['best_baseline']} {c['ratios'][c['best_baseline']]:.2f}" if c["best_baseline"] else ""
        vals = [f"{c['ratios'][s]:.2f}" if s in c["ratios"] else "" for s in shown]
        lines.append(
            f"| {c['model']} | {c['sampler']} | {c['nfe']} | {c['optimum']:.3g} | {best} | " + " | ".join(vals) + " |"
        )
    return "\n".join(lines)


def _table_html(rows: list[dict]) -> str:
    head = (
        "<tr><th>model</th><th>sampler</th><th>nfe</th><th>metric</th><th>CRS schedule</th><th>best baseline</th>"
        "<th>ratio</th><th>paired CI of the difference (Bonferroni)</th><th>verdict</th>"
        "<th>sig. better / worse than</th></tr>"
    )
    body = []
    for c in rows:
        verdict = _verdict(c)
        ratio = "" if c["ratio"] is None else f"{c['ratio']:.2f}"
        body.append(
            f"<tr><td>{html.escape(entry_key(c))}</td><td>{c['sampler']}</td><td>{c['nfe']}</td><td>{c['metric']}</td>"
            f"<td>{html.escape(c['crs'])} {c['crs_value']:.4g}</td><td>{html.escape(c['best_baseline'])} "
            f"{c['baseline_value']:.4g}</td><td>{ratio}</td>"
            f"<td>[{c['diff_ci_low']:.3g}, {c['diff_ci_high']:.3g}]</td><td>{verdict}</td>"
            f"<td>{_against_all(c)}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _markdown_table_html(markdown: str) -> str:
    """A Markdown table (header, rule, rows) as an HTML table."""
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if not line.startswith("|---")]
    cells = "".join(
        "<tr>"
        + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(x.strip())}</{'th' if i == 0 else 'td'}>" for x in r)
        + "</tr>"
        for i, r in enumerate(rows)
    )
    return f"<table>{cells}</table>"


def _convert(notebook: Path, out: Path) -> None:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(notebook))
    atomic_write_bytes(out, body.encode())


def build_report(run_dir) -> Path:
    """Write ``run_dir/report/index.html`` (and the converted notebooks and figures beside it)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"No run folder at {str(run_dir)!r}.")
    report = run_dir / "report"
    report.mkdir(exist_ok=True)
    links = []
    site = (run_dir / "site" / "index.html").is_file()  # the tutorial site (crs.run.publish): typeset formulas offline
    for nb in sorted(run_dir.glob("0*_*.ipynb")):
        if site:
            links.append(f'<li><a href="../site/{nb.stem}.html">{html.escape(nb.stem)}</a></li>')
        else:
            _convert(nb, report / f"{nb.stem}.html")
            links.append(f'<li><a href="{nb.stem}.html">{html.escape(nb.stem)}</a></li>')
    figures = []
    for name, caption in FIGURES:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, report / name)
            figures.append(
                f'<figure><img src="{name}" '
                f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
            )
    for extra in sorted(run_dir.glob("metric_*.png")):
        shutil.copyfile(extra, report / extra.name)
        figures.append(
            f'<figure><img src="{extra.name}"><figcaption>{html.escape(extra.stem)} against nfe '
            "(05)</figcaption></figure>"
        )
    metrics_path = run_dir / "metrics.json"
    table = "<p>No evaluation in this run (metrics.json is missing).</p>"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        table = (
            f"<p>Features: <code>{html.escape(str(metrics.get('features')))}</code>. "
            f"{html.escape(intervals_note(metrics))} The best baseline is named after the fact; its interval is one of "
            "the cell's simultaneous (Bonferroni) intervals, and the verdict needs it to exclude 0. The last column "
            "counts the baselines the CRS schedule is significantly better / worse than.</p>"
            + _table_html(summary_table(metrics))
        )
        training = training_markdown(metrics)
        if training:
            table_md, _, note = training.partition("\n\n")
            table += "<h3>CRS training against the control (the CRS schedule for both models)</h3>"
            table += _markdown_table_html(table_md) + f"<p>{html.escape(note)}</p>"
        optimum = optimum_markdown(metrics)
        if optimum:
            table += "<h3>Teacher error as a ratio to the optimum (1: the best schedule of that budget)</h3>"
            table += _markdown_table_html(optimum)
    site_note = (
        '<p>Each links to its page of the <a href="../site/index.html">tutorial site</a> (formulas typeset offline, '
        "navigation between the stages; <code>python -m crs publish</code>).</p>"
        if site
        else "<p>As HTML (nbconvert; its formulas need MathJax from the network: the tutorial site, "
        "<code>python -m crs publish</code>, typesets them offline).</p>"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CRS report: {html.escape(run_dir.resolve().name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:90%}} td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}
figure{{display:inline-block;margin:1em}} img{{max-width:520px}}</style>
</head><body>
<h1>Constant Rate Scheduling: report of run <code>{html.escape(run_dir.resolve().name)}</code></h1>
<p>Constant Rate Scheduling (Okada et al., arXiv 2411.12188) picks the noise schedule so that the noised data
distribution changes at a constant rate under a chosen discrepancy. This run executed the notebooks below with
papermill.</p>
<h2>Executed notebooks</h2>{site_note}<ul>{"".join(links) or "<li>none</li>"}</ul>
<h2>Summary: CRS against the best baseline</h2>{table}
<h2>Main figures</h2>{"".join(figures) or "<p>none</p>"}
</body></html>
"""
    atomic_write_bytes(report / "index.html", page.encode())
    return report / "index.html"
