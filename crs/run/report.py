"""A report for publication: ``run_dir/report/index.html``.

It links every executed notebook of the run, converted to HTML with nbconvert, shows the summary
table of CRS against the best baseline (from ``metrics.json``) and the main figures. Everything it
links is copied into ``report/``, so the folder can be published as it is.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from crs.io import atomic_write_bytes

__all__ = ["FIGURES", "build_report", "summary_markdown", "summary_table"]

FIGURES = [
    ("rate.png", "Velocity of each measure against logsnr (01)"),
    ("schedules.png", "CRS and baseline sampling schedules (02)"),
    ("step_discrepancy.png", "Per-step discrepancy: CRS steps are equal (02)"),
    ("finetune_noise_density.png", "Training noise-level distributions: CRS and control (03)"),
    ("finetune_heldout_loss.png", "Held-out loss at fixed noise levels after fine-tuning (03)"),
    ("samples.png", "Samples under every schedule at the smallest budget (04)"),
    ("crs_ratio.png", "CRS against the best baseline at each nfe (05)"),
]


def summary_table(metrics: dict, metrics_shown: tuple[str, ...] | None = None) -> list[dict]:
    """Rows of the summary: one per comparison of the headline metrics (NLL for analytic data, FID)."""
    comps = metrics.get("comparisons", [])
    names = list(dict.fromkeys(c["metric"] for c in comps))
    shown = metrics_shown or tuple(m for m in names if m == "nll" or m.startswith("fid_"))
    return [c for c in comps if c["metric"] in shown]


def _verdict(c: dict) -> str:
    return ("CRS better" if c["crs_better"] else "CRS worse") if c["significant"] else "not significant"


def summary_markdown(metrics: dict) -> str:
    """The summary table as Markdown (for the README): ``python -m crs summary RUN_DIR``."""
    lines = [
        "| model | sampler | nfe | metric | CRS | best baseline | ratio | paired 95 % CI of the difference | verdict |",
        "|---|---|---:|---|---:|---|---:|---|---|",
    ]
    for c in summary_table(metrics):
        ratio = "" if c["ratio"] is None else f"{c['ratio']:.2f}"
        lines.append(
            f"| {c['model']} | {c['sampler']} | {c['nfe']} | {c['metric']} | {c['crs_value']:.4g} | "
            f"{c['best_baseline']} "
            f"{c['baseline_value']:.4g} | {ratio} | [{c['diff_ci_low']:.3g}, {c['diff_ci_high']:.3g}] | {_verdict(c)} |"
        )
    return "\n".join(lines)


def _table_html(rows: list[dict]) -> str:
    head = (
        "<tr><th>model</th><th>sampler</th><th>nfe</th><th>metric</th><th>CRS</th><th>best baseline</th>"
        "<th>ratio</th><th>paired 95% CI of the difference</th><th>verdict</th></tr>"
    )
    body = []
    for c in rows:
        verdict = _verdict(c)
        ratio = "" if c["ratio"] is None else f"{c['ratio']:.2f}"
        body.append(
            f"<tr><td>{html.escape(c['model'])}</td><td>{c['sampler']}</td><td>{c['nfe']}</td><td>{c['metric']}</td>"
            f"<td>{c['crs_value']:.4g}</td><td>{html.escape(c['best_baseline'])} "
            f"{c['baseline_value']:.4g}</td><td>{ratio}</td>"
            f"<td>[{c['diff_ci_low']:.3g}, {c['diff_ci_high']:.3g}]</td><td>{verdict}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


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
    for nb in sorted(run_dir.glob("0*_*.ipynb")):
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
            f"<p>Features: <code>{html.escape(str(metrics.get('features')))}</code>; {metrics.get('n_boot')} bootstrap "
            "replicates; the best baseline is chosen per row after the fact; the verdict needs the paired 95% interval "
            "of the difference to exclude 0.</p>" + _table_html(summary_table(metrics))
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
<h2>Executed notebooks</h2><ul>{"".join(links) or "<li>none</li>"}</ul>
<h2>Summary: CRS against the best baseline</h2>{table}
<h2>Main figures</h2>{"".join(figures) or "<p>none</p>"}
</body></html>
"""
    atomic_write_bytes(report / "index.html", page.encode())
    return report / "index.html"
