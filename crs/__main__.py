"""Command line: ``python -m crs run params/demo.yaml [--stages ...] [--set stage.key=value] [--sweep key=v1,v2]``.

Also ``python -m crs check params/x.yaml`` (validate only), ``python -m crs report runs/x`` (rebuild the report) and
``python -m crs publish runs/x [--check]`` (build the tutorial site, and check it in headless Chromium) and
``python -m crs docs [--check]`` (the documentation site), and ``python -m crs export schedule.json --steps N --format
json|comfyui|a1111|diffusers [--denoise d] [--flow]`` (a schedule's levels for a sampler front end).
"""

from __future__ import annotations

import argparse
import sys

import yaml


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crs", description="Run CRS experiments (papermill notebooks) from params files."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute an experiment's stages in order (skipping those up to date)")
    run.add_argument("params", help="params/<experiment>.yaml")
    run.add_argument("--stages", help="comma-separated subset, e.g. rate_estimation,schedule_optimization")
    run.add_argument(
        "--set", action="append", default=[], metavar="[STAGE.]KEY=VALUE", help="override a key (YAML value)"
    )
    run.add_argument("--sweep", metavar="[STAGE.]KEY=V1,V2,...", help="one run folder per value, then a summary table")
    run.add_argument("--run-dir", help="run folder (default: the params file's, or runs/<experiment>)")
    run.add_argument("--no-report", action="store_true", help="skip the HTML report and the tutorial site")
    run.add_argument(
        "--dry-run", action="store_true", help="every stage at tiny size on the CPU, into <run_dir>-dry-run"
    )
    run.add_argument(
        "--device", default="cpu", help="device of a dry run's stages (default cpu; the GPU check uses cuda)"
    )
    run.add_argument(
        "--side",
        type=int,
        help="a dry run's stand-in pipelines and images at this size in px (e.g. 32) instead of the hub model's",
    )
    check = sub.add_parser(
        "check", help="check every value of every stage (and the models they load) without running anything"
    )
    check.add_argument("params")
    check.add_argument("--stages", help="comma-separated subset")
    check.add_argument(
        "--set", action="append", default=[], metavar="[STAGE.]KEY=VALUE", help="override a key (YAML value)"
    )
    check.add_argument("--run-dir", help="run folder (default: the params file's, or runs/<experiment>)")
    report = sub.add_parser("report", help="(re)build run_dir/report/index.html")
    report.add_argument("run_dir")
    publish = sub.add_parser(
        "publish", help="build the tutorial site of a run (run_dir/site: Sphinx + myst-nb, offline MathJax)"
    )
    publish.add_argument("run_dir")
    publish.add_argument("--out", help="site folder (default run_dir/site)")
    publish.add_argument(
        "--check", action="store_true", help="then open every page in headless Chromium: math, figures, links"
    )
    docs = sub.add_parser("docs", help="build the documentation site (docs/ and the notebooks) into docs/_build/site")
    docs.add_argument("--out", help="site folder (default docs/_build/site)")
    docs.add_argument("--check", action="store_true", help="then open every page in headless Chromium")
    summary = sub.add_parser("summary", help="print the summary table of run_dir/metrics.json as Markdown")
    summary.add_argument("run_dir")
    export = sub.add_parser(
        "export", help="a schedule's levels for a sampler front end: json, comfyui, a1111 (Forge) or diffusers"
    )
    export.add_argument("schedule", help="a schedule.json (notebook 02's, or a searched schedule's)")
    export.add_argument("--steps", type=int, required=True, help="steps of the whole schedule (>= 2)")
    export.add_argument("--format", default="json", help="json (default), comfyui, a1111 or diffusers")
    export.add_argument(
        "--denoise", type=float, default=1.0, help="img2img strength in (0, 1]: the last int(steps x d) steps"
    )
    export.add_argument("--flow", action="store_true", help="a flow-matching model: levels as flow times")
    export.add_argument("--shift", type=float, help="diffusers format, flow model: the scheduler's static shift")
    export.add_argument("--mu", type=float, help="diffusers format, flow model: the dynamic shift's mu (Flux)")
    export.add_argument("--output", help="write to this file (atomically) instead of printing")
    args = parser.parse_args(argv)
    if args.command == "export":
        from crs.export import export_schedule

        try:
            text = export_schedule(args.schedule, args.steps, args.format, args.denoise, args.flow, args.shift, args.mu)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.output:
            from crs.io import atomic_write_bytes

            atomic_write_bytes(args.output, (text + "\n").encode())
        else:
            print(text)
        return 0

    from crs.run.experiment import (
        ExperimentError,
        apply_overrides,
        dry_run,
        load_params,
        preflight,
        run_experiment,
        run_locations,
        sweep,
    )
    from crs.run.report import build_report, summary_markdown

    try:
        if args.command == "summary":
            import json
            from pathlib import Path

            path = Path(args.run_dir) / "metrics.json"
            if not path.is_file():
                raise ExperimentError(f"No metrics.json in {args.run_dir!r}: run the evaluation stage first.")
            print(summary_markdown(json.loads(path.read_text())))
            return 0
        if args.command == "report":
            print(build_report(args.run_dir))
            return 0
        if args.command == "docs":
            from crs.run.publish import browser_check, build_docs, check_report

            index = build_docs(".", args.out)
            if args.check:
                result = browser_check(index.parent)
                problems = check_report(result)
                print(
                    f"browser check: {len(result['pages'])} pages, "
                    f"{sum(p['typeset'] for p in result['pages'])} formulas typeset, "
                    f"{sum(p['images'] for p in result['pages'])} images, {len(problems)} problems"
                )
                for line in problems:
                    print(f"  {line}", file=sys.stderr)
                return 1 if problems else 0
            return 0
        if args.command == "publish":
            from crs.run.publish import browser_check, build_site

            index = build_site(args.run_dir, args.out)
            if args.check:
                result = browser_check(index.parent)
                bad = [
                    p["page"]
                    for p in result["pages"]
                    if p["raw_math"] or p["broken_images"] or p["mathjax_errors"] or p["typeset"] < p["formulas"]
                ]
                print(
                    f"browser check: {len(result['pages'])} pages, "
                    f"{sum(p['typeset'] for p in result['pages'])} formulas typeset, "
                    f"{sum(p['images'] for p in result['pages'])} images, {len(result['dead_links'])} dead links, "
                    f"{len(bad)} pages with raw math or broken images"
                )
                if bad or result["dead_links"]:
                    for page in bad:
                        print(f"  {page}", file=sys.stderr)
                    for page, link in result["dead_links"]:
                        print(f"  {page}: dead link {link}", file=sys.stderr)
                    return 1
            return 0
        params = load_params(args.params)
        if args.run_dir:
            params["run_dir"] = args.run_dir
        params = apply_overrides(params, args.set)
        stages = args.stages.split(",") if args.stages else None
        if args.command == "check":
            changed = preflight(params, stages)
            print(f"{args.params}: valid ({', '.join(stages or params['stages']) or 'all stages'})")
            for stage, problem in changed.items():
                print(f"[{stage}] {problem}: it runs again, and every stage after it")
            return 0
        if args.dry_run:
            params = dry_run(params, device=args.device, side=args.side)
        if args.sweep:
            key, _, values = args.sweep.partition("=")
            rows = sweep(params, key, [yaml.safe_load(v) for v in values.split(",")], stages)
            print(
                f"\n| {key} | metric | comparisons | CRS better (significant) | CRS worse (significant) | median "
                "ratio |"
            )
            print("|---|---|---:|---:|---:|---:|")
            for r in rows:
                print(
                    f"| {r['value']} | {r.get('metric')} | {r['comparisons']} | "
                    f"{r.get('crs_significantly_better', '')} "
                    f"| {r.get('crs_significantly_worse', '')} | "
                    f"{r.get('median_ratio') if r.get('median_ratio') is None else round(r['median_ratio'], 3)} |"
                )
        else:
            run_experiment(params, stages)
        if not args.no_report:
            from pathlib import Path

            from crs.run.publish import build_site

            if any(Path(params["run_dir"]).glob("0*_*.ipynb")):  # a sweep's base folder has none
                build_site(params["run_dir"], log=lambda *_: None)
            build_report(params["run_dir"])
        print("\n" + "\n".join(run_locations(params["run_dir"])))
    except (ExperimentError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
