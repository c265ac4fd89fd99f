"""What each stage of a run wrote, recorded when it completes, so that an artifact changed afterwards is noticed.

The batch runner (:mod:`crs.run.experiment`) stores :func:`record_outputs` in a stage's run record
(``.stages/<stage>.json``, key ``outputs``: ``{path relative to the run folder: {"size", "sha256"}}``); before
anything runs it asks :func:`output_problem` of every completed stage whether its files are still those: a file
that changed, vanished or (for records written before output hashes) is missing or is JSON that no longer loads
makes that stage out of date.

Files up to :data:`WHOLE_HASH_BYTES` are hashed whole (sha256); larger ones (sample tensors and models of image
runs, which reach gigabytes) by their size and the sha256 of their first and last MiB, which catches a truncated,
replaced or overwritten file in milliseconds and, unlike a modification time, survives a copy of the run folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["OUTPUTS", "WHOLE_HASH_BYTES", "output_problem", "record_outputs", "stage_outputs"]

# The artifacts each stage writes for the stages after it (and the reader), relative to the run folder; a folder
# stands for every file under it. Figures are not listed: nothing downstream reads them.
OUTPUTS = {
    "base_model": ("base_model.json", "models/base"),
    "rate_estimation": ("rate.json",),
    "schedule_optimization": ("schedule.json",),
    "training_schedule_finetune": ("finetune.json",),  # and the model folders of stage_outputs
    "sampling": ("samples", "search"),
    "evaluation": ("metrics.json",),
}
OPTIONAL = {"search"}  # written only when the stage searches schedules
WHOLE_HASH_BYTES = 64 << 20
_PART = 1 << 20


def stage_outputs(stage: str, parameters: dict) -> list[str]:
    """The outputs of ``stage`` run with ``parameters`` (its record's): :data:`OUTPUTS`, plus notebook 03's models."""
    outputs = list(OUTPUTS.get(stage, ()))
    if stage == "training_schedule_finetune":
        from crs.run.jobs import finetune_models

        seeds = parameters.get("finetune_seeds") or []
        outputs += [f"models/{name}" for pair in finetune_models(seeds) for name in pair]
    return outputs


def _digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: fh.read(_PART), b""):
                h.update(block)
        else:  # head and tail only: see the module's docstring
            h.update(fh.read(_PART))
            fh.seek(size - _PART)
            h.update(fh.read(_PART))
    return h.hexdigest()


def _fingerprint(path: Path) -> dict:
    size = path.stat().st_size
    return {"size": size, "sha256": _digest(path, size)}


def _files(run_dir: Path, outputs: list[str]) -> list[str]:
    """The files of ``outputs`` that exist (folders expanded, sorted), as paths relative to ``run_dir``."""
    found = []
    for rel in outputs:
        path = run_dir / rel
        if path.is_file():
            found.append(rel)
        elif path.is_dir():
            found += sorted(p.relative_to(run_dir).as_posix() for p in path.rglob("*") if p.is_file())
    return found


def record_outputs(run_dir, stage: str, parameters: dict) -> dict[str, dict]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` for every file the stage wrote (see the module)."""
    run_dir = Path(run_dir)
    return {rel: _fingerprint(run_dir / rel) for rel in _files(run_dir, stage_outputs(stage, parameters))}


def _unreadable_json(run_dir: Path, files: list[str]) -> str | None:
    for rel in files:
        if rel.endswith(".json"):
            try:
                json.loads((run_dir / rel).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return rel
    return None


def output_problem(run_dir, record: dict) -> str | None:
    """What is wrong with the outputs of a completed stage (its run record), or None when they are as it left them.

    A record with ``outputs`` is checked file by file (changed or vanished); one written before output hashes
    existed is checked by what can be: every output is there and its JSON files load.
    """
    run_dir, stage = Path(run_dir), record["stage"]
    outputs = record.get("outputs")
    if outputs is None:
        expected = [o for o in stage_outputs(stage, record.get("parameters") or {}) if o not in OPTIONAL]
        missing = next((o for o in expected if not (run_dir / o).exists()), None)
        if missing is not None:
            return f"{missing} (written by {stage}) is missing"
        bad = _unreadable_json(run_dir, _files(run_dir, expected))
        return None if bad is None else f"{bad} (written by {stage}) is not valid JSON"
    for rel, recorded in outputs.items():
        path = run_dir / rel
        if not path.is_file():
            return f"{rel} (written by {stage}) vanished since that stage ran"
        if _fingerprint(path) != recorded:
            return f"{rel} (written by {stage}) changed since that stage ran"
    return None
