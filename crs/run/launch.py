"""Run a job of :mod:`crs.run.jobs` here or under ``accelerate launch`` with several processes (GPUs).

The notebooks call :func:`run` with a job name and a JSON-able spec. With ``num_processes=1`` the job runs in
the notebook's own process; with more it is started as
``accelerate launch --multi_gpu --num_processes N --module crs.run.launch JOB SPEC.json``, one process per GPU
(on a machine without GPUs, N CPU processes talking over gloo, which is how the tests check it).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from crs.args import check_int
from crs.run.jobs import JOBS, load_finetune_result

__all__ = ["main", "run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(job: str, spec: dict, num_processes: int = 1, log=print) -> list[dict]:
    """Run a job here (``num_processes=1``) or under ``accelerate launch`` with ``num_processes`` processes.

    Raises:
        ValueError: unknown job, bad ``num_processes``, or a launched job that failed (with the tail of its output).
    """
    if job not in JOBS:
        raise ValueError(f"Unknown job {job!r}; valid choices: {', '.join(JOBS)}.")
    check_int("num_processes", num_processes, 1)
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
        "crs.run.launch",
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
    """``python -m crs.run.launch JOB SPEC.json`` (what :func:`run` launches in every process)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in JOBS:
        print(f"usage: python -m crs.run.launch {{{','.join(JOBS)}}} SPEC.json", file=sys.stderr)
        return 2
    JOBS[argv[0]](json.loads(Path(argv[1]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
