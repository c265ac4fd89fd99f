"""The prepared GPU check: ``make gpu-check`` (``python -m benchmarks.gpu_check``) on a CUDA machine without network.

Three parts, all offline, meant to finish in under 8 minutes on one GPU:

1. **Same numbers on the GPU as on the CPU**, for small fixed cases (:func:`consistency`): the exact and
   the neural denoisers, rate estimation with the ``data``, ``noise`` and ``fid`` measures, every sampler,
   and one training step in float32 and in bf16 autocast. Each case states its tolerance, derived from
   float32 round-off through the computation (GPU and CPU kernels sum in different orders; TF32 is
   switched off so that the comparison is of float32 arithmetic).
2. **Every shipped experiment's dry run with ``device=cuda``** (:func:`dry_runs`): every stage, every
   measure, sampler and metric it names, training with bf16 autocast through accelerate, evaluation.
3. **Per-stage timings** of those runs, printed as a table and written with everything else to
   ``<out>/gpu_check.json``, and on a GPU as the record ``benchmarks/records/gpu-check-<gpu>.json``
   (:mod:`benchmarks.records`), which ``python -m benchmarks.render`` puts into ``docs/results/gpu.md``.

Exit status 0 when every case agrees and every dry run succeeds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rel(a, b) -> float:
    """Largest difference relative to the larger array's scale."""
    import torch

    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    return float((a - b).abs().max() / max(float(a.abs().max()), float(b.abs().max()), 1e-30))


def consistency(device: str) -> list[dict]:
    """Small fixed cases on ``device`` and on the CPU; one row per case with the difference and its tolerance."""
    import tempfile

    import torch

    import crs
    from crs.models import build_denoiser, load_denoiser
    from crs.run.standins import build_tiny_pipeline
    from crs.sampling import SAMPLERS, generate
    from crs.training import EDMLoss, make_noise

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []

    def case(name, cpu, dev, tol, why):
        diff = _rel(cpu, dev)
        rows.append(dict(case=name, difference=diff, tolerance=tol, ok=bool(diff <= tol), why=why))

    data = crs.make_dataset("gmm")
    mlp = build_denoiser((2,), seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_denoiser(
            str(build_tiny_pipeline(Path(tmp) / "ldm", "ldm", (3, 16, 16), prediction_type="sample"))
        ).eval()
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    z = torch.randn(8, *pipe.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.exp(torch.linspace(-4, 4, 256))
    with torch.no_grad():
        cpu = {"exact": data.denoiser(x, sigma), "mlp": mlp(x, sigma), "ldm": pipe(z, sigma[::32])}
        mlp.to(device), pipe.to(device)
        dev = {
            "exact": data.denoiser(x.to(device), sigma.to(device)),
            "mlp": mlp(x.to(device), sigma.to(device)),
            "ldm": pipe(z.to(device), sigma[::32].to(device)),
        }
    for name in cpu:
        tol = 1e-12 if name == "exact" else 1e-4
        case(
            f"denoiser {name}",
            cpu[name],
            dev[name],
            tol,
            "float64 on the CPU either way"
            if name == "exact"
            else "float32 round-off through a few layers (measured ~1e-6)",
        )
    images = crs.models.model_space(crs.make_dataset("digits", resolution=16, channels=3), pipe)
    feats = crs.metrics.make_feature_extractor("efficientnet-lite0", device="cpu")
    for measure in ("data", "noise", "fid"):
        kwargs = dict(sigma_min=0.05, sigma_max=20.0, grid_size=4, n_samples=64, seed=0)
        pipe.cpu()
        fn = crs.models.pixel_features(feats, pipe) if measure == "fid" else None
        a = crs.estimate_rate(measure, images, denoiser=pipe, feature_fn=fn, **kwargs).discrepancy
        pipe.to(device)
        fn = (
            crs.models.pixel_features(crs.metrics.make_feature_extractor("efficientnet-lite0", device=device), pipe)
            if measure == "fid"
            else None
        )
        b = crs.estimate_rate(measure, images, denoiser=pipe, feature_fn=fn, **kwargs).discrepancy
        case(
            f"rate {measure} (ldm)",
            a,
            b,
            1e-3,
            "differences of float32 predictions at neighbouring levels: round-off "
            "relative to the difference, not to the values",
        )
    sigmas = crs.baseline_sigmas("karras", 4, 0.01, 50.0)
    for sampler in sorted(SAMPLERS):
        mlp.cpu()
        a = generate(mlp, (2,), 64, sigmas, seed=0, sampler=sampler)
        mlp.to(device)
        b = generate(mlp, (2,), 64, sigmas, seed=0, sampler=sampler, device=device)
        case(f"sampler {sampler} (mlp)", a, b, 1e-4, "float32 round-off through 4-7 network evaluations")
    noise = make_noise("cosine")
    for precision in ("fp32", "bf16"):
        losses = []
        for where in ("cpu", device):
            model = build_denoiser((2,), seed=1).to(where)
            edm = EDMLoss(noise, model.sigma_data)
            x0, s, eps = edm.draw(data, 512, torch.Generator().manual_seed(0), where)
            kind = torch.device(where).type
            autocast = (lambda kind=kind: torch.autocast(kind, dtype=torch.bfloat16)) if precision == "bf16" else None
            losses.append(float(edm(model, x0, s, eps, *([autocast] if autocast else [])).detach()))
        case(
            f"training loss {precision}",
            losses[0],
            losses[1],
            1e-4 if precision == "fp32" else 3e-2,
            "bf16 keeps 8 bits of mantissa (2^-8 = 4e-3 per value; the mean over 1024 values errs less)"
            if precision == "bf16"
            else "float32 round-off of a mean over 1024 values",
        )
    return rows


def dry_runs(device: str, experiments: list[str], out: Path, jobs: int) -> list[dict]:
    """``python -m crs run params/<e>.yaml --dry-run --device <device>`` for each experiment, ``jobs`` at a time."""

    def one(name: str) -> dict:
        start = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "crs",
            "run",
            str(ROOT / "params" / f"{name}.yaml"),
            "--dry-run",
            "--device",
            device,
            "--run-dir",
            str(out / name),
            "--no-report",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        stages = {}
        for record in sorted((out / f"{name}-dry-run" / ".stages").glob("*.json")):
            rec = json.loads(record.read_text())
            stages[rec["stage"]] = dict(status=rec["status"], seconds=round(rec.get("seconds", 0.0), 1))
        print(
            f"dry run {name}: {'ok' if proc.returncode == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        return dict(
            experiment=name,
            ok=proc.returncode == 0,
            seconds=round(time.perf_counter() - start, 1),
            stages=stages,
            error=None if proc.returncode == 0 else (proc.stderr or proc.stdout)[-2000:],
        )

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, experiments))


def environment(device: str) -> dict:
    import torch

    info = dict(
        python=platform.python_version(), torch=torch.__version__, device=device, cuda=torch.cuda.is_available()
    )
    if device.startswith("cuda") and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported())
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda", help="device to check (default cuda; cpu runs the same code as a self-test)"
    )
    parser.add_argument(
        "--experiments", default="all", help="comma-separated params files without .yaml (default: every shipped one)"
    )
    parser.add_argument("--out", default="runs/gpu-check", help="folder for the dry runs and gpu_check.json")
    parser.add_argument("--jobs", type=int, default=4, help="dry runs at a time (default 4)")
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the record benchmarks/records/gpu-check-<device>.json (default: on a GPU only)",
    )
    args = parser.parse_args(argv)
    from benchmarks.records import begin

    begin()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                "error: no CUDA device is visible; run the GPU check on a GPU machine (or --device cpu as a self-test)",
                file=sys.stderr,
            )
            return 2
    names = (
        sorted(p.stem for p in (ROOT / "params").glob("*.yaml"))
        if args.experiments == "all"
        else args.experiments.split(",")
    )
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = dict(environment=environment(args.device))
    t = time.perf_counter()
    report["consistency"] = consistency(args.device)
    report["consistency_seconds"] = round(time.perf_counter() - t, 1)
    failed = [r["case"] for r in report["consistency"] if not r["ok"]]
    print(f"consistency: {len(report['consistency'])} cases, failed: {failed or 'none'}", flush=True)
    report["dry_runs"] = dry_runs(args.device, names, out, args.jobs)
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    from benchmarks.tables import gpu_check_md

    print("\n" + gpu_check_md(report))
    for run in report["dry_runs"]:
        if run["error"]:
            print(f"  {run['experiment']} failed: ...{run['error'][-600:]}")
    print(f"\nwritten {out / 'gpu_check.json'}")
    ok = all(r["ok"] for r in report["consistency"]) and all(r["ok"] for r in report["dry_runs"])
    if args.record if args.record is not None else args.device.startswith("cuda"):
        from benchmarks.records import write_record

        gpu = report["environment"].get("gpu") or args.device
        name = "gpu-check-" + re.sub(r"[^0-9a-z]+", "-", gpu.lower()).strip("-")
        write_record(
            name, "gpu-check", report, ["benchmarks.gpu_check", *(argv or sys.argv[1:])], report["seconds"], args.device
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
