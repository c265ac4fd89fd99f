"""Benchmark records: every measured figure in the docs comes from one of these JSON files.

A record is written by the benchmark that measured it (``python -m benchmarks.bench ...``, the GPU check, the demo's
timings) into ``benchmarks/records/<name>.json``:

``{"name", "benchmark", "command", "commit", "dirty", "date", "machine": {...}, "seconds", "result": {...}}``

``python -m benchmarks.render`` turns the records into ``docs/results/*.md`` and the README's headline table;
``tests/test_results.py`` checks that every page matches its records.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "records"
PROVENANCE = ("name", "benchmark", "command", "commit", "dirty", "date", "machine", "seconds", "result")

__all__ = ["PROVENANCE", "RECORDS", "load_records", "machine", "write_record"]


def _git(*args: str) -> str:
    """Git's answer in the repository, or "" where there is none (a copy of the tree on a GPU machine)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """What the benchmark ran on: CPU model and cores, threads torch used, memory, the GPU when ``device`` is one.

    ``label`` is a short description for the pages: ``$CRS_MACHINE`` when set, else the GPU's name or
    ``"<cores>-core CPU"``.
    """
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30)
    except (ValueError, OSError, AttributeError):
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["label"] = os.environ.get("CRS_MACHINE") or info.get("gpu") or f"{info['cores']}-core CPU"
    return info


def _plain(obj):
    """JSON-able copy: tuples as lists, numpy scalars as numbers, dict keys as strings."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    return obj


_STARTED: dict = {}


def begin() -> None:
    """Note the commit and whether the tree is clean now, at the start of a benchmark (a record describes the code
    that ran, not the tree at the moment it ends)."""
    _STARTED.update(
        commit=_git("rev-parse", "--short=12", "HEAD") or os.environ.get("CRS_COMMIT", "unknown"),
        dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
    )


def write_record(
    name: str, benchmark: str, result, argv: list[str], seconds: float, device: str = "cpu", folder=None
) -> Path:
    """Write ``result`` as the record ``<folder>/<name>.json`` (default :data:`RECORDS`), atomically, with the
    command that reproduces it (``python -m benchmarks.<module> <argv>``; ``argv[0]`` is the module), the commit
    (as :func:`begin` found it; ``dirty`` when tracked files differed from it), the UTC date, the machine and the
    wall-clock seconds."""
    from crs.io import atomic_write_json

    if not _STARTED:
        begin()
    record = {
        "name": name,
        "benchmark": benchmark,
        "command": ".venv/bin/python -m " + shlex.join(argv),
        "commit": _STARTED["commit"],
        "dirty": _STARTED["dirty"],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(device),
        "seconds": round(float(seconds), 1),
        "result": _plain(result),
    }
    path = Path(folder or RECORDS) / f"{name}.json"
    atomic_write_json(path, record)
    print(f"record: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)
    return path


def load_records(folder=None) -> dict[str, dict]:
    """Every record in ``folder`` (default :data:`RECORDS`) by name; ValueError naming a file that lacks a field."""
    out = {}
    for path in sorted(Path(folder or RECORDS).glob("*.json")):
        record = json.loads(path.read_text())
        missing = [k for k in PROVENANCE if k not in record]
        if missing:
            raise ValueError(f"The benchmark record {path.name} lacks {missing}.")
        if record["name"] != path.stem:
            raise ValueError(f"The benchmark record {path.name} is named {record['name']!r}, not {path.stem!r}.")
        out[record["name"]] = record
    return out
