"""Markdown tables of benchmark results: one function per benchmark, shared by the command line (which prints
them) and the renderer of ``docs/results`` (which writes them from the records), so a page shows exactly what the
benchmark printed."""

from __future__ import annotations

import numpy as np

__all__ = ["TABLES", "geomean", "quality_summary"]


def _table(header: list[str], align: str, rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def geomean(values) -> float:
    """Geometric mean of the positive ``values`` (NaN when there are none)."""
    values = [v for v in values if v > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def rate_md(rows: list[dict]) -> str:
    return _table(
        ["measure", "network evaluations", "feature evaluations", "seconds (median)", "seconds (worst)"],
        ["---", "---:", "---:", "---:", "---:"],
        [
            [f"`{r['measure']}`", f"{r['evaluations']:,}", f"{r['feature_evaluations']:,}", f"{r['seconds']:.3f}"]
            + [f"{r['worst']:.3f}"]
            for r in rows
        ],
    )


def training_md(rows: list[dict]) -> str:
    return _table(
        ["model", "parameters", "batch", "steps / s"],
        ["---", "---:", "---:", "---:"],
        [[r["model"], f"{r['params']:,}", r["batch"], f"{r['steps_per_second']:.1f}"] for r in rows],
    )


def online_md(rows: list[dict]) -> str:
    header = ["model", "steps", "re-estimate every", "grid x samples", "re-estimations", "their time (s)"]
    return _table(
        header + ["step time (s)", "overhead"],
        ["---"] + ["---:"] * 7,
        [
            [r["model"], r["steps"], r["online_every"], f"{r['grid']} x {r['samples']}", r["updates"]]
            + [f"{r['online_seconds']:.2f}", f"{r['train_seconds']:.1f}", f"{r['overhead']:.1f} %"]
            for r in rows
        ],
    )


def sampling_md(rows: list[dict]) -> str:
    return _table(
        ["model", "batch", "ms per nfe", "sample-evaluations / s"],
        ["---", "---:", "---:", "---:"],
        [[r["model"], r["batch"], f"{r['ms_per_nfe']:.1f}", f"{r['samples_nfe_per_s']:,.0f}"] for r in rows],
    )


def features_md(rows: list[dict]) -> str:
    return _table(
        ["data", "features", "images / s"],
        ["---", "---", "---:"],
        [[r["data"], r["features"], f"{r['images_per_s']:.0f}"] for r in rows],
    )


def ratio_md(comparisons: list[dict]) -> str:
    """CRS against the best fixed baseline per cell, NLL and FID side by side (paired 95 % intervals)."""
    cells = {}
    for c in comparisons:
        verdict = ("**better**" if c["crs_better"] else "worse") if c["significant"] else "n.s."
        cells.setdefault((c["measure"], c["sampler"], c["nfe"]), {})[c["metric"]] = [
            f"{c['crs_value']:.4g}",
            f"{c['best_baseline']} {c['baseline_value']:.4g}",
            f"{c['ratio']:.2f}",
            verdict,
        ]
    head = ["CRS measure", "sampler", "nfe", "NLL: CRS", "best baseline", "ratio", "verdict", "FID: CRS"]
    return _table(
        head + ["best baseline", "ratio", "verdict"],
        ["---", "---", "---:", "---:", "---", "---:", "---", "---:", "---", "---:", "---"],
        [[m, s, n, *v["nll"], *v["fid_identity"]] for (m, s, n), v in cells.items()],
    )


def _ratio_text(r, digits: int) -> str:
    """A paired ratio ``(value, low, high)`` with its 95 % interval, marked (lower) / (higher) where the interval
    excludes 1."""
    value, lo, hi = r
    mark = "" if lo <= 1.0 <= hi else (" (lower)" if hi < 1.0 else " (higher)")
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]{mark}"


def guidance_md(result: dict) -> str:
    """Per guidance scale: the teacher error of each CRS variant, the best fixed baseline and the optimum, with the
    paired ratios (95 % intervals) that decide which rate to use; then geometric means over the cells."""

    def ratio(r) -> str:
        return _ratio_text(r, 2)

    rows = []
    for c in result["cells"]:
        v, w = c["values"], c["w"]
        target = f"crs w={w:g}"
        rows.append(
            [
                f"{w:g}",
                c["sampler"],
                c["nfe"],
                f"{v['crs w=0']:.3g}",
                f"{v['crs w=1']:.3g}",
                f"{v[target]:.3g}" if w not in (0.0, 1.0) else "(w=1)",
                f"{c['best_baseline']} {v[c['best_baseline']]:.3g}",
                f"{v['optimal']:.3g}" if "optimal" in v else "",
                ratio(c["target_vs_w1"]) if w not in (0.0, 1.0) else "",
                ratio(c["w0_vs_w1"]),
                ratio(c["w1_vs_best"]),
            ]
        )
    head = [
        "w",
        "sampler",
        "nfe",
        "CRS w=0",
        "CRS w=1",
        "CRS target w",
        "best baseline",
        "optimal",
        "target / w=1",
        "w=0 / w=1",
        "w=1 / best baseline",
    ]
    table = _table(head, ["---:", "---", "---:"] + ["---:"] * 3 + ["---"] + ["---:"] * 4, rows)
    summary = []
    for w in result["scales"]:
        cells = [c for c in result["cells"] if c["w"] == w]
        names = ["crs w=0", "crs w=1"] + ([f"crs w={w:g}"] if w not in (0.0, 1.0) else [])
        best = [c["values"][c["best_baseline"]] for c in cells]
        line = [f"{w:g}"]
        for name in names:
            line.append(f"{name}: {geomean([c['values'][name] / b for c, b in zip(cells, best)]):.2f}")
        if all("optimal" in c["values"] for c in cells):
            line.append(f"optimal: {geomean([c['values']['optimal'] / b for c, b in zip(cells, best)]):.2f}")
        summary.append([line[0], ", ".join(line[1:])])
    out = (
        table
        + "\n\nGeometric mean over the cells of each schedule's teacher error over the best fixed baseline's (below 1: "
        "better):\n\n" + _table(["w", "ratios"], ["---:", "---"], summary)
    )
    if any("costs" in c for c in result["cells"]):
        out += "\n\n" + _guidance_search_md(result)
    return out


def _guidance_search_md(result: dict) -> str:
    """Does the best schedule move with guidance? Each schedule's teacher error as a ratio to ``optimal``'s (searched
    for that guided ODE), the searched peers with their cost, and geometric means per guidance scale."""
    shown = ["crs w=0", "crs w=1", "target", "crs-select", "gits"]
    rows, ratios = [], {}
    for c in result["cells"]:
        v, w, costs = c["values"], c["w"], c["costs"]
        opt = v["optimal"]
        cell = {
            "best baseline": v[c["best_baseline"]] / opt,
            "crs w=0": v["crs w=0"] / opt,
            "crs w=1": v["crs w=1"] / opt,
            "target": v[f"crs w={w:g}"] / opt,
            "crs-select": v["crs-select"] / opt,
            "gits": v["gits"] / opt,
        }
        for k, r in cell.items():
            ratios.setdefault(w, {}).setdefault(k, []).append(r)
        rows.append(
            [
                f"{w:g}",
                c["sampler"],
                c["nfe"],
                f"{opt:.3g}",
                f"{c['best_baseline']} {cell['best baseline']:.2f}",
                *[f"{cell[k]:.2f}" for k in shown],
                costs["crs-select"].get("chosen", ""),
                f"{costs['optimal']['evaluations']:,} / {costs['crs-select']['evaluations']:,} / "
                f"{costs['gits']['evaluations']:,}",
            ]
        )
    head = ["w", "sampler", "nfe", "optimal (teacher error)", "best baseline", *shown, "crs-select chose"]
    head.append("cost per search sample: optimal / crs-select / gits")
    table = _table(head, ["---:", "---", "---:", "---:", "---"] + ["---:"] * len(shown) + ["---", "---:"], rows)
    names = ["best baseline", *shown]
    summary = [[f"{w:g}", *[f"{geomean(r[k]):.2f}" for k in names]] for w, r in ratios.items()]
    return (
        "Against the optimum of each guided ODE (ratios of teacher errors; 1 is the best schedule of the budget; "
        "`target`: CRS from the rate at the target w):\n\n"
        + table
        + "\n\nGeometric means over the cells of each scale:\n\n"
        + _table(["w", *names], ["---:"] * (len(names) + 1), summary)
    )


def _cells(result: dict) -> list[dict]:
    order = list(dict.fromkeys(c["sampler"] for c in result["cells"]))
    return sorted(result["cells"], key=lambda c: (order.index(c["sampler"]), c["nfe"]))


def _best_fixed(rows: dict) -> str:
    return min((k for k in rows if rows[k]["kind"] == "baseline"), key=lambda k: rows[k]["teacher_error"])


def quality_summary(result: dict) -> dict[str, dict[str, float]]:
    """Geometric mean of each method's ratio to ``optimal`` over the cells: ``{method: {sampler or "all": value}}``,
    with ``"best baseline"`` the best fixed baseline of each cell, chosen after the fact."""
    cells = _cells(result)
    names = [k for k in cells[0]["rows"] if "teacher_error" in cells[0]["rows"][k]]
    samplers = list(dict.fromkeys(c["sampler"] for c in cells))
    out = {}
    for k in names + ["best baseline"]:
        out[k] = {}
        for s in samplers + ["all"]:
            rows = [c["rows"] for c in cells if s == "all" or c["sampler"] == s]
            pick = (lambda r: r[_best_fixed(r)]) if k == "best baseline" else (lambda r, k=k: r[k])  # noqa: E731
            out[k][s] = geomean([pick(r)["ratio"] for r in rows])
    return out


def _quality_ratios(result: dict, cells: list[dict], names: list[str]) -> str:
    rows = []
    for c in cells:
        r, best = c["rows"], _best_fixed(c["rows"])
        vals = [f"**{r[k]['ratio']:.2f}**" if k == best else f"{r[k]['ratio']:.2f}" for k in names]
        rows.append([c["sampler"], c["nfe"], f"{r['optimal']['teacher_error']:.3g}", *vals])
    return (
        f"Teacher error as a ratio to `optimal` ({result['data']}; search on {result['n_search']} samples, judged "
        f"on {result['n_eval']} others; the teacher's own error {result['teacher_error']:.1e}; bold: the best "
        "fixed baseline of the cell):\n\n"
        + _table(["sampler", "nfe", "optimal (RMS)", *names], ["---", "---:", "---:"] + ["---:"] * len(names), rows)
    )


def _quality_fid(cells: list[dict]) -> str:
    shown = ["best baseline", "crs (data)", "crs (noise)", "crs (solver)", "crs-select", "gits", "optimal"]
    rows = []
    for c in cells:
        r, best = c["rows"], _best_fixed(c["rows"])
        out = []
        for k in shown:
            row, label = (r[best], f"{best}: ") if k == "best baseline" else (r[k], "")
            out.append(f"{label}{row['fid']:.2e} [{row['fid_low']:.1e}, {row['fid_high']:.1e}]")
        rows.append([c["sampler"], c["nfe"], *out])
    return "Frechet distance of the endpoints to the data (identity features, 95 % bootstrap interval):\n\n" + _table(
        ["sampler", "nfe", *shown], ["---", "---:"] + ["---"] * len(shown), rows
    )


def _quality_costs(cells: list[dict]) -> str:
    costly = [k for k in cells[0]["rows"] if cells[0]["rows"][k]["kind"] in ("crs", "peer")]
    rows = []
    for c in cells:
        r = c["rows"]
        check = ""
        if "optimal (powell)" in r:
            a, b = r["optimal"]["search_objective"], r["optimal (powell)"]["search_objective"]
            check = f"{a:.3g} vs {b:.3g} ({100 * (a / b - 1):+.1f} %)"
        rows.append([c["sampler"], c["nfe"], *[f"{r[k]['evaluations']:,} ({r[k]['seconds']:.1f} s)" for k in costly]])
        rows[-1].append(check)
    return (
        "Search cost (network evaluations per search sample beyond a rate estimate; seconds) and the two optimisers' "
        "objectives (L-BFGS against Powell, where checked):\n\n"
        + _table(["sampler", "nfe", *costly, "L-BFGS vs Powell"], ["---", "---:"] + ["---"] * (len(costly) + 1), rows)
    )


def _quality_wins(cells: list[dict], names: list[str]) -> str:
    """Per method, in how many cells it beats the best fixed baseline (chosen after the fact) and is within 1.2x of
    the optimum."""
    rows = []
    for k in names:
        if cells[0]["rows"][k]["kind"] == "baseline" or k == "optimal":
            continue
        wins = sum(c["rows"][k]["ratio"] < c["rows"][_best_fixed(c["rows"])]["ratio"] for c in cells)
        near = sum(c["rows"][k]["ratio"] <= 1.2 for c in cells)
        rows.append([k, f"{wins} of {len(cells)}", f"{near} of {len(cells)}"])
    return "Where each method wins and loses:\n\n" + _table(
        ["method", "cells better than the best fixed baseline", "cells within 1.2x of optimal"],
        ["---", "---:", "---:"],
        rows,
    )


def quality_md(result: dict) -> str:
    """The quality benchmark: ratios to the optimum, their geometric means, the distribution metric, the costs."""
    cells = _cells(result)
    names = [k for k in cells[0]["rows"] if "teacher_error" in cells[0]["rows"][k]]
    summary = quality_summary(result)
    samplers = list(next(iter(summary.values())))
    parts = [_quality_ratios(result, cells, names)]
    parts.append(
        "Geometric mean of the ratio over the cells:\n\n"
        + _table(
            ["method", *samplers],
            ["---"] + ["---:"] * len(samplers),
            [[k, *[f"{v:.2f}" for v in per.values()]] for k, per in summary.items()],
        )
    )
    parts.append(_quality_wins(cells, names))
    if "fid" in cells[0]["rows"]["optimal"]:
        parts.append(_quality_fid(cells))
    parts.append(_quality_costs(cells))
    parts.append(
        "crs-select chose: "
        + "; ".join(f"{c['sampler']}@{c['nfe']}: {c['rows']['crs-select']['chosen']}" for c in cells)
    )
    return "\n\n".join(parts)


def coverage_md(result: dict) -> str:
    """Empirical coverage of nominal 95 % intervals; in brackets the share of intervals entirely below the target."""
    rows = result["rows"]
    methods = list(rows[0]["coverage"])
    head = (
        f"{result['n']} draws in {result['dim']} dimensions, {rows[0]['repeats']} repeats of {rows[0]['n_boot']} "
        f"replicates (binomial standard error {rows[0]['stderr']:.3f}); in brackets the share of intervals entirely "
        "below the target:\n\n"
    )
    return head + _table(
        ["statistic", "target", *methods],
        ["---", "---:"] + ["---:"] * len(methods),
        [
            [r["case"], f"{r['target']:.4g}", *[f"{r['coverage'][m]:.3f} ({r['below'][m]:.3f})" for m in methods]]
            for r in rows
        ],
    )


def stability_md(result: dict) -> str:
    """How many of a run's verdicts change when its evaluation is redone with other bootstrap seeds."""
    total = result["comparisons"] + result["model_comparisons"]
    lines = [
        f"{result['run']}: {total} verdicts ({result['comparisons']} CRS against the baselines, "
        f"{result['model_comparisons']} CRS training against the control), {result['n_boot']} replicates; bootstrap "
        f"seeds {result['seeds']} against the run's own: {len(result['changed'])} changes, "
        f"{len(result['undecided'])} of them of verdicts at the edge in neither run.",
        "",
        _table(
            ["bootstrap seed", "verdicts at the edge"],
            ["---", "---:"],
            [[k, v] for k, v in result["edges"].items()],
        ),
    ]
    if result["changed"]:
        lines += ["", "Changes:", ""]
        for seed, kind, key, was, now in result["changed"]:
            mark = lambda v: v[0] + (" (edge)" if v[1] else "")  # noqa: E731
            lines.append(f"- seed {seed}: {kind} {' / '.join(map(str, key))}: {mark(was)} -> {mark(now)}")
    return "\n".join(lines)


GPU_STAGES = (
    "base_model",
    "rate_estimation",
    "schedule_optimization",
    "training_schedule_finetune",
    "sampling",
    "evaluation",
)


def gpu_check_md(report: dict) -> str:
    """The GPU check: every consistency case against its tolerance, every dry run's stage times."""
    cases = _table(
        ["case", "difference (relative)", "tolerance", "ok"],
        ["---", "---:", "---:", "---"],
        [
            [r["case"], f"{r['difference']:.2e}", f"{r['tolerance']:.0e}", "yes" if r["ok"] else "NO"]
            for r in report["consistency"]
        ],
    )
    runs = _table(
        ["experiment (dry run)", "ok", *GPU_STAGES, "total s"],
        ["---", "---"] + ["---:"] * (len(GPU_STAGES) + 1),
        [
            [r["experiment"], "yes" if r["ok"] else "NO"]
            + [str(r["stages"].get(s, {}).get("seconds", "")) for s in GPU_STAGES]
            + [r["seconds"]]
            for r in report["dry_runs"]
        ],
    )
    env = report["environment"]
    return (
        f"Python {env['python']}, torch {env['torch']}, device {env['device']}"
        + (f" ({env['gpu']}, bf16 {'yes' if env.get('bf16') else 'no'})" if env.get("gpu") else "")
        + f"; consistency {report['consistency_seconds']} s, everything {report['seconds']} s.\n\n"
        + cases
        + "\n\n"
        + runs
    )


def demo_md(result: dict) -> str:
    """The demo's stage times and its summary table (``python -m crs summary``)."""
    times = _table(
        ["stage", "seconds"],
        ["---", "---:"],
        [[s, f"{t:.0f}"] for s, t in result["stages"].items()] + [["total", f"{sum(result['stages'].values()):.0f}"]],
    )
    out = times + "\n\n" + result["summary"]
    if "data_free" in result:  # a data-free rate with the dataset's beside it (params/digits-flow.yaml)
        free = result["data_free"]
        out += (
            f"\n\nThe rate from {free['n']} of the model's own samples ({free['steps']}-step Heun solve, "
            f"{free['evaluations']:,} network evaluations) against the dataset's: the two 10-step CRS schedules "
            f"differ by at most {free['gap_10_steps']:.3f} in log sigma."
        )
    return out


def datafree_md(result: dict) -> str:
    """Per measure, sampler and budget: the gap between the data-free and the dataset schedule, the teacher error
    and Frechet distance of each, and their ratios (data-free / dataset; (lower) / (higher) where the paired
    interval excludes 1); then the pool's cost and geometric means per measure."""

    def ratio(r) -> str:
        return _ratio_text(r, 3)

    rows = []
    for r in result["rows"]:
        te, fid = r["teacher_error"], r["fid"]
        rows.append(
            [
                r["measure"],
                r["sampler"],
                r["nfe"],
                f"{r['log_sigma_gap']:.3f} ({r['control_gap']:.3f})",
                f"{te['dataset']:.3g}",
                f"{te['data-free']:.3g}",
                ratio(r["teacher_ratio"]),
                ratio(r["control_ratio"]),
                f"{fid['dataset']:.3g}",
                f"{fid['data-free']:.3g}",
                f"{r['fid_ratio']:.3f} ({r['control_fid_ratio']:.3f})",
            ]
        )
    head = [
        "measure",
        "sampler",
        "nfe",
        "max log-sigma gap (control)",
        "teacher error (dataset)",
        "(data-free)",
        "data-free / dataset [95 %]",
        "control / dataset [95 %]",
        "FD (dataset)",
        "(data-free)",
        "FD ratio (control)",
    ]
    table = _table(head, ["---", "---", "---:"] + ["---:"] * 8, rows)
    pool = result["pool"]
    means = []
    for m in dict.fromkeys(r["measure"] for r in result["rows"]):
        sel = [r for r in result["rows"] if r["measure"] == m]
        means.append(
            [
                m,
                f"{max(r['log_sigma_gap'] for r in sel):.3f} ({max(r['control_gap'] for r in sel):.3f})",
                f"{geomean([r['teacher_ratio'][0] for r in sel]):.3f}"
                f" ({geomean([r['control_ratio'][0] for r in sel]):.3f})",
                f"{geomean([r['fid_ratio'] for r in sel]):.3f} ({geomean([r['control_fid_ratio'] for r in sel]):.3f})",
            ]
        )
    return (
        f"The pool: {pool['n']} model samples from a {pool['steps']}-step Heun solve (own error "
        f"{pool['teacher_error']:.2g}), {pool['evaluations']:,} network evaluations, {pool['seconds']:.1f} s; its "
        f"Frechet distance to the data {pool['fid_to_data']:.3g}. Judged on {result['n_eval']} samples (teacher: "
        f"{result['teacher_steps']} Heun steps, own error {result['teacher_error']:.2g}); rates on "
        f"{result['rate']['grid_size']} intervals, {result['rate']['n_samples']} samples.\n\n"
        + table
        + "\n\nPer measure: the largest gap, and the geometric means of the ratios over the cells (1: no loss), "
        "data-free against the dataset and, in brackets, the control (the dataset's rate from other draws, "
        "seed + 1) against the dataset:\n\n"
        + _table(
            ["measure", "max gap (control)", "teacher-error ratio (control)", "FD ratio (control)"],
            ["---", "---:", "---:", "---:"],
            means,
        )
    )


def fidelity_md(result: dict) -> str:
    """A port against its authors' code: per case both schedules' largest gap in log sigma, objectives, seconds
    and teacher errors."""
    if "reference_path" in result["rows"][0]:  # a programme over grid indices: the paths themselves
        rows = [
            [
                r["steps"],
                " ".join(map(str, r["reference_path"])),
                " ".join(map(str, r["port_path"])),
                f"{r['max_log_gap']:.2g}",
                f"{r['reference_teacher_error']:.4g}",
                f"{r['port_teacher_error']:.4g}",
                f"{r['reference_seconds']:.2f}",
                f"{r['port_seconds']:.2f}",
            ]
            for r in result["rows"]
        ]
        header = ["steps", "grid path (reference)", "grid path (port)", "max log-sigma gap"]
        header += ["teacher error (reference)", "teacher error (port)", "seconds (reference)", "seconds (port)"]
        return f"{result['repository']}, {result['case']}.\n\n" + _table(header, ["---:"] * 8, rows)
    if "reference_valid_loss" in result["rows"][0]:  # a learnt schedule: validation losses, the order's spread
        rows = [
            [r["steps"], f"{r['max_log_gap']:.2g}", f"{r['reference_valid_loss']:.4g}", f"{r['port_valid_loss']:.4g}"]
            + [
                f"{r['reference_teacher_error']:.4g}",
                f"{r['port_teacher_error']:.4g}",
                f"{r['start_teacher_error']:.4g}",
            ]
            + [f"{r['reference_seconds']:.1f}", f"{r['port_seconds']:.1f}"]
            for r in result["rows"]
        ]
        header = ["steps", "max log-sigma gap", "validation loss (reference)", "validation loss (port)"]
        header += ["teacher error (reference)", "teacher error (port)", "teacher error (start)"]
        header += ["seconds (reference)", "seconds (port)"]
        text = f"{result['repository']}, {result['case']}.\n\n" + _table(header, ["---:"] * 9, rows)
        matched = "; ".join(
            f"{m['steps']} steps: gap {m['max_log_gap']:.2g}, teacher error {m['reference_teacher_error']:.4g}"
            for m in result["matched"]
        )
        text += f"\n\nThe original driven in the port's minibatch order: {matched}."
        for steps in dict.fromkeys(r["steps"] for r in result["spread"]):
            sp = [r for r in result["spread"] if r["steps"] == steps]
            te = [v for r in sp for v in (r["reference_teacher_error"], r["port_teacher_error"])]
            text += (
                f"\n\nOther minibatch orders ({len(sp)} seeds, {steps} steps): each code's schedule moves by up to "
                f"{max(max(r['reference_gap'], r['port_gap']) for r in sp):.2g} in log sigma; teacher errors "
                f"{min(te):.4g} to {max(te):.4g}."
            )
        return text
    rows = []
    for r in result["rows"]:
        rows.append(
            [
                r["steps"],
                f"{r['max_log_gap']:.2g}",
                f"{r['reference_objective']:.4g}",
                f"{r['port_objective']:.4g}",
                f"{r['reference_teacher_error']:.4g}",
                f"{r['port_teacher_error']:.4g}",
                f"{r['reference_seconds']:.2f}",
                f"{r['port_seconds']:.2f}",
            ]
        )
    header = ["steps", "max log-sigma gap", "objective (reference)", "objective (port)"]
    header += ["teacher error (reference)", "teacher error (port)", "seconds (reference)", "seconds (port)"]
    return f"{result['repository']}, {result['case']}.\n\n" + _table(header, ["---:"] * 8, rows)


def peers_summary(result: dict) -> dict:
    """Per method: the geometric mean of its ratio to the best schedule found in each cell, per sampler and over
    all cells, its worst ratio over all cells, and its median search cost
    (network evaluations per search sample, a fixed baseline's 0)."""
    cells = _cells(result)
    names = [k for k in cells[0]["rows"] if "ratio_best" in cells[0]["rows"][k]]
    samplers = list(dict.fromkeys(c["sampler"] for c in cells))
    out = {}
    for k in names:
        ratios = {s: [c["rows"][k]["ratio_best"] for c in cells if c["sampler"] == s] for s in samplers}
        out[k] = {
            "kind": cells[0]["rows"][k]["kind"],
            "geomean": {s: geomean(v) for s, v in ratios.items()} | {"all": geomean(sum(ratios.values(), []))},
            "worst": max(sum(ratios.values(), [])),
            "cost": float(np.median([c["rows"][k]["evaluations"] for c in cells])),
            "max_cost": max(c["rows"][k]["evaluations"] for c in cells),
            "seconds": float(np.median([c["rows"][k].get("seconds", 0.0) for c in cells])),
        }
    return out


def peers_recommendation(result: dict) -> dict:
    """The methods the numbers recommend, per sampler: with no teacher (no network evaluation beyond a rate
    estimate: a fixed baseline, ``dmn``, plain CRS) and with a teacher budget (every search of the sampler's cells
    at most ``budgets["teacher"]`` evaluations per search sample), the method of least worst ratio to the best of
    the sampler's cells; ``{sampler: {"no_teacher": (method, worst), "teacher": (method, worst)}}``."""
    cells = _cells(result)
    out = {}
    for sampler in dict.fromkeys(c["sampler"] for c in cells):
        mine = [c for c in cells if c["sampler"] == sampler]
        names = [k for k in mine[0]["rows"] if "ratio_best" in mine[0]["rows"][k]]
        worst = {k: max(c["rows"][k]["ratio_best"] for c in mine) for k in names}
        cost = {k: max(c["rows"][k]["evaluations"] for c in mine) for k in names}
        picks = {}
        for label, budget in (
            ("no_teacher", result["budgets"]["no_teacher"]),
            ("teacher", result["budgets"]["teacher"]),
        ):
            fits = [k for k in names if cost[k] <= budget]
            best = min(fits, key=lambda k: worst[k])
            picks[label] = (best, worst[best])
        out[sampler] = picks
    return out


def peers_md(result: dict) -> str:
    """The head-to-head: every schedule's ratio to the best found in its cell, the winners, geometric means, costs,
    and the recommendations with the targets beside them."""
    cells = _cells(result)
    summary = peers_summary(result)
    names = list(summary)
    head = ["sampler", "nfe", "best (teacher error)", *names]
    rows = []
    for c in cells:
        r = c["rows"]
        rows.append(
            [c["sampler"], c["nfe"], f"{c['best']} ({r[c['best']]['teacher_error']:.3g})"]
            + [f"{r[k]['ratio_best']:.2f}" for k in names]
        )
    parts = ["Teacher error as a ratio to the best schedule found in the cell (1.00: the best):\n\n"]
    parts[0] += _table(head, ["---", "---:", "---"] + ["---:"] * len(names), rows)
    samplers = [s for s in next(iter(summary.values()))["geomean"] if s != "all"]
    parts.append(
        "Per method: geometric mean of the ratio per sampler and over all cells, the worst ratio, and the median "
        "search cost (network evaluations per search sample; a rate estimate's own cost is not counted):\n\n"
        + _table(
            ["method", "kind", *samplers, "all", "worst", "evaluations", "seconds"],
            ["---", "---"] + ["---:"] * (len(samplers) + 4),
            [
                [k, v["kind"], *[f"{v['geomean'][s]:.2f}" for s in samplers], f"{v['geomean']['all']:.2f}"]
                + [f"{v['worst']:.2f}", f"{v['cost']:.0f}", f"{v['seconds']:.1f}"]
                for k, v in summary.items()
            ],
        )
    )
    rec = peers_recommendation(result)
    met = {True: "met", False: "not met"}
    targets = {"no_teacher": 1.3, "teacher": 1.1}
    rows = []
    for sampler, picks in rec.items():
        row = [sampler]
        for label, (method, worst) in picks.items():
            # the no-teacher target is set for the Euler and DPM-Solver++(2M) cells only
            judged = label == "teacher" or sampler in ("euler", "dpmpp_2m")
            verdict = f" (target {targets[label]}: {met[worst <= targets[label]]})" if judged else ""
            row += [method, f"{worst:.2f}{verdict}"]
        rows.append(row)
    parts.append(
        f"Recommended per sampler, from the table: the method of least worst ratio over the sampler's cells, without "
        f"a teacher (no evaluation beyond a rate estimate) and with a teacher budget of "
        f"{result['budgets']['teacher']:,} evaluations per search sample (every cell of the sampler within it):\n\n"
        + _table(
            ["sampler", "without a teacher", "its worst ratio", "with a teacher", "its worst ratio"],
            ["---", "---", "---:", "---", "---:"],
            rows,
        )
    )
    return "\n\n".join(parts)


TABLES = {
    "peers": peers_md,
    "fidelity": fidelity_md,
    "datafree": datafree_md,
    "guidance": guidance_md,
    "rate": rate_md,
    "training": training_md,
    "online": online_md,
    "sampling": sampling_md,
    "features": features_md,
    "ratio": ratio_md,
    "quality": quality_md,
    "coverage": coverage_md,
    "stability": stability_md,
    "gpu-check": gpu_check_md,
    "demo": demo_md,
    "digits-cond": demo_md,
    "digits-flow": demo_md,
}
