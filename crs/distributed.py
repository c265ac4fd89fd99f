"""Sampling and feature extraction over several processes (GPUs) with ``accelerate launch``.

The notebooks call :func:`run` with a job name and a JSON-able spec. With ``num_processes=1`` the
job runs in the notebook's own process; with more it is started as
``accelerate launch --multi_gpu --num_processes N --module crs.distributed JOB SPEC.json``, one
process per GPU (on a machine without GPUs, N CPU processes talking over gloo, which is how the
tests check it). Every process takes its share of the rows of each sample set: sample i keeps its
seed ``seed + i``, so the files are those of a one-process run, to float round-off (bit for bit when
the batches and thread counts match, as the tests check: batch composition and threads change the
order of floating-point sums); the main process gathers the shares through the file system (one
machine) and writes every file atomically.

Jobs:
    ``sample``: :func:`sampling_job`, notebook 04 (samples, or their features for large runs).
    ``features``: :func:`features_job`, notebook 05 (features of stored samples, before scoring).
    ``finetune``: :func:`finetune_job`, notebook 03 (the CRS and control fine-tuning runs).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "JOBS",
    "ProcessState",
    "check_num_processes",
    "features_job",
    "finetune_job",
    "gather_rows",
    "load_finetune_result",
    "process_state",
    "run",
    "sampling_job",
]


@dataclass
class ProcessState:
    """This process's place among those of a launch: ``rank`` of ``world``; ``barrier`` waits for all."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    barrier: Callable[[], None] = lambda: None


def process_state() -> ProcessState:
    """The launch this process belongs to (accelerate's ``PartialState`` when started with several processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ProcessState()
    from accelerate import PartialState

    st = PartialState(cpu=not torch.cuda.is_available())
    return ProcessState(st.process_index, st.num_processes, st.local_process_index, st.wait_for_everyone)


def process_device(device: str, state: ProcessState) -> str:
    """``device`` for this process: with several processes on GPUs, each takes ``cuda:<local rank>``."""
    from crs.args import resolve_device

    device = resolve_device(device)
    if state.world > 1 and device.startswith("cuda"):
        return f"cuda:{state.local_rank}"
    return device


def gather_rows(x: torch.Tensor, state: ProcessState, stem: Path) -> torch.Tensor | None:
    """Concatenate every process's rows in rank order on the main process (others get None).

    The shares pass through files ``<stem>.<rank>`` beside the final file (removed afterwards).
    """
    if state.world == 1:
        return x
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    torch.save(x.contiguous(), f"{stem}.{state.rank}")
    state.barrier()
    out = None
    if state.rank == 0:
        parts = [f"{stem}.{r}" for r in range(state.world)]
        out = torch.cat([torch.load(p, weights_only=True) for p in parts])
        for p in parts:
            os.remove(p)
    state.barrier()
    return out


def sampling_job(spec: dict) -> list[dict]:
    """Notebook 04's work: load the models, fit the CRS schedule to their range, sample the grid, write the index.

    ``spec`` keys: ``run_dir``, ``dataset``, ``dataset_kwargs``, ``models``, ``schedule`` (path),
    ``baselines``, ``samplers``, ``nfe``, ``n_samples``, ``batch_size``, ``seed``, ``device``,
    ``store`` (``samples`` or ``features``), ``features``, ``keep``.
    """
    import crs
    from crs.io import atomic_write_json
    from crs.metrics import make_feature_extractor
    from crs.models import resolve_models
    from crs.optimize import schedule_functions
    from crs.sampling import fit_schedule, sample_grid

    state = process_state()
    run_dir = Path(spec["run_dir"])
    data = crs.make_dataset(spec["dataset"], **spec["dataset_kwargs"])
    device = process_device(spec["device"], state)
    denoisers = resolve_models(spec["models"], run_dir, data, device)
    schedule = fit_schedule(crs.export.as_schedule(spec["schedule"]), denoisers)
    schedules = schedule_functions(schedule, spec["baselines"])
    extractor = make_feature_extractor(spec["features"], data.shape, device) if spec["store"] == "features" else None
    index = sample_grid(
        denoisers,
        schedules,
        spec["samplers"],
        spec["nfe"],
        spec["n_samples"],
        run_dir / "samples",
        seed=spec["seed"],
        batch_size=spec["batch_size"],
        device=device,
        progress=spec.get("progress", False),
        features=extractor,
        keep=spec["keep"],
    )
    if state.rank == 0:
        atomic_write_json(
            run_dir / "samples" / "index.json",
            {
                "seed": spec["seed"],
                "n_samples": spec["n_samples"],
                "store": spec["store"],
                "processes": state.world,
                "schedule_range": [schedule.sigma_min, schedule.sigma_max],
                "entries": index,
            },
        )
    return index


def features_job(spec: dict) -> list[dict]:
    """Notebook 05's heavy part: features of every stored sample set that lacks them, over all processes.

    ``spec`` keys: ``run_dir``, ``dataset``, ``dataset_kwargs``, ``features``, ``device``. Sets already
    carrying features of the same extractor are left as they are. Writes ``<set>.features.pt`` and
    the updated ``samples/index.json``; returns the entries.
    """
    import crs
    from crs.io import atomic_write_json, read_json
    from crs.metrics import make_feature_extractor
    from crs.sampling import _save_tensor

    state = process_state()
    run_dir = Path(spec["run_dir"])
    index_path = run_dir / "samples" / "index.json"
    saved = read_json(index_path, "sample index (run notebook 04 first)")
    data = crs.make_dataset(spec["dataset"], **spec["dataset_kwargs"])
    extractor = make_feature_extractor(spec["features"], data.shape, process_device(spec["device"], state))
    for entry in saved["entries"]:
        if entry.get("features") == extractor.name:
            continue
        if "features" in entry:
            raise ValueError(
                f"The sample set {entry['path']!r} kept only features of {entry['features']!r}, not "
                f"{extractor.name!r}: "
                f"evaluate with features={entry['features']!r} or sample again with store='samples'."
            )
        x = torch.load(entry["path"], weights_only=True)
        lo, hi = len(x) * state.rank // state.world, len(x) * (state.rank + 1) // state.world
        feats = gather_rows(
            torch.from_numpy(extractor(x[lo:hi])).float(), state, Path(entry["path"]).with_suffix(".fpart")
        )
        if state.rank == 0:
            path = Path(entry["path"]).with_suffix(".features.pt")
            _save_tensor(path, feats)
            entry.update(features=extractor.name, features_path=str(path))
    if state.rank == 0:
        atomic_write_json(index_path, dict(saved, feature_processes=state.world))
    state.barrier()
    return saved["entries"]


def finetune_job(spec: dict) -> dict:
    """Notebook 03's training runs: every configuration fine-tunes a fresh copy of the base model.

    ``spec`` keys: ``run_dir``, ``dataset``, ``dataset_kwargs``, ``base_model``, ``configs``
    (``{name: TrainConfig fields}``), ``progress``. Under several processes gradients are averaged
    across them (accelerate) and each draws its own batches. The main process saves the EMA models
    to ``models/<name>`` and each run's record to ``checkpoints/<name>/result.json``.

    Returns:
        ``{name: TrainResult}`` (on the main process; see :func:`load_finetune_result`).
    """
    import crs
    from crs.io import atomic_write_json
    from crs.models import load_denoiser
    from crs.training import TrainConfig, train

    state = process_state()
    run_dir = Path(spec["run_dir"])
    data = crs.make_dataset(spec["dataset"], **spec["dataset_kwargs"])
    results = {}
    for name, fields in spec["configs"].items():
        result = train(
            load_denoiser(spec["base_model"], data),
            data,
            TrainConfig(**fields),
            checkpoint_dir=run_dir / "checkpoints" / name,
            progress=spec.get("progress", False) and state.rank == 0,
            desc=name,
        )
        if state.rank == 0:
            result.ema.save_pretrained(run_dir / "models" / name)
            atomic_write_json(
                run_dir / "checkpoints" / name / "result.json",
                {
                    "losses": result.losses,
                    "steps_done": result.steps_done,
                    "seconds": result.seconds,
                    "online_seconds": result.online_seconds,
                    "online_updates": result.online_updates,
                    "resumed_from": result.resumed_from,
                    "noise": result.noise.state(),
                    "processes": state.world,
                },
            )
        results[name] = result
        state.barrier()
    return results


def load_finetune_result(run_dir, name: str, data=None):
    """The :class:`crs.training.TrainResult` of a fine-tuning run written by :func:`finetune_job`."""
    from crs.io import read_json
    from crs.models import load_denoiser
    from crs.training import TrainResult, _noise_from_state

    rec = read_json(Path(run_dir) / "checkpoints" / name / "result.json", "fine-tuning record")
    return TrainResult(
        ema=load_denoiser(str(Path(run_dir) / "models" / name), data),
        losses=rec["losses"],
        steps_done=rec["steps_done"],
        seconds=rec["seconds"],
        online_seconds=rec["online_seconds"],
        online_updates=rec["online_updates"],
        noise=_noise_from_state(rec["noise"]),
        resumed_from=rec["resumed_from"],
        extra={"processes": rec["processes"]},
    )


JOBS = {"sample": sampling_job, "features": features_job, "finetune": finetune_job}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_num_processes(num_processes) -> int:
    """ValueError unless ``num_processes`` is an integer >= 1."""
    from crs.args import check_int

    return check_int("num_processes", num_processes, 1)


def run(job: str, spec: dict, num_processes: int = 1, log=print) -> list[dict]:
    """Run a job here (``num_processes=1``) or under ``accelerate launch`` with ``num_processes`` processes.

    Raises:
        ValueError: unknown job, bad ``num_processes``, or a launched job that failed (with the tail of its output).
    """
    if job not in JOBS:
        raise ValueError(f"Unknown job {job!r}; valid choices: {', '.join(JOBS)}.")
    check_num_processes(num_processes)
    if num_processes == 1:
        return JOBS[job](spec)
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, spec_path = tempfile.mkstemp(dir=run_dir, prefix=f".{job}-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(spec, fh)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "--module",
        "crs.distributed",
        job,
        spec_path,
    ]
    lines: list[str] = []
    try:  # the workers' output is passed on as it comes (progress bars of long GPU runs), and kept for errors
        with subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        ) as proc:
            for line in proc.stdout:
                lines.append(line)
                if spec.get("progress"):
                    print(line, end="", flush=True)
        returncode = proc.returncode
    finally:
        os.remove(spec_path)
    if returncode != 0:
        text = "".join(lines)
        errors = re.findall(r"^(?:\[rank\d+\]:\s*)?((?:\w+\.)*\w+(?:Error|Exception): .*)$", text, flags=re.M)
        errors = [
            e for e in errors if "ChildFailedError" not in e
        ]  # the launcher's own; the workers' last error is the cause
        detail = errors[-1] if errors else text[-3000:]
        raise ValueError(f"The {job!r} job failed under accelerate launch with {num_processes} processes: {detail}")
    log(f"{job}: {num_processes} processes under accelerate launch")
    if job == "finetune":
        return {name: load_finetune_result(run_dir, name) for name in spec["configs"]}
    return json.loads((run_dir / "samples" / "index.json").read_text())["entries"]


def main(argv=None) -> int:
    """``python -m crs.distributed JOB SPEC.json`` (what :func:`run` launches in every process)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in JOBS:
        print(f"usage: python -m crs.distributed {{{','.join(JOBS)}}} SPEC.json", file=sys.stderr)
        return 2
    JOBS[argv[0]](json.loads(Path(argv[1]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
