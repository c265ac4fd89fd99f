"""Command line: ``python -m crs run params/demo.yaml [--stages ...] [--set stage.key=value] [--sweep key=v1,v2]``.

Also ``python -m crs check params/x.yaml`` (validate only) and ``python -m crs report runs/x`` (rebuild the report).
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
    run.add_argument("--no-report", action="store_true", help="skip the HTML report")
    run.add_argument(
        "--dry-run", action="store_true", help="every stage at tiny size on the CPU, into <run_dir>-dry-run"
    )
    run.add_argument(
        "--device", default="cpu", help="device of a dry run's stages (default cpu; the GPU check uses cuda)"
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
    summary = sub.add_parser("summary", help="print the summary table of run_dir/metrics.json as Markdown")
    summary.add_argument("run_dir")
    args = parser.parse_args(argv)

    from crs.run.experiment import (
        ExperimentError,
        apply_overrides,
        dry_run,
        load_params,
        preflight,
        run_experiment,
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
        params = load_params(args.params)
        if args.run_dir:
            params["run_dir"] = args.run_dir
        params = apply_overrides(params, args.set)
        stages = args.stages.split(",") if args.stages else None
        if args.command == "check":
            preflight(params, stages)
            print(f"{args.params}: valid ({', '.join(stages or params['stages']) or 'all stages'})")
            return 0
        if args.dry_run:
            params = dry_run(params, device=args.device)
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
            print(f"report: {build_report(params['run_dir'])}")
    except ExperimentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
