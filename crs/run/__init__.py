"""Orchestration: everything that reads or writes a run folder, starts processes or runs notebooks.

The engine (the other modules of ``crs``) takes tensors and objects and returns tensors and objects; the
modules here use it and never the reverse:

* :mod:`crs.run.experiment`: params files, the preflight check, the batch runner (papermill), dry runs, sweeps;
* :mod:`crs.run.checks`: one validator per stage, called by the notebooks and the batch runner;
* :mod:`crs.run.jobs`: the work of notebooks 03-05 on a run folder (fine-tuning, sampling, features, scoring);
* :mod:`crs.run.launch` / :mod:`crs.run.processes`: one process or several under ``accelerate launch``;
* :mod:`crs.run.standins`: tiny offline stand-ins for hub models (dry runs, tests);
* :mod:`crs.run.report`, :mod:`crs.run.plotting`: the HTML report and the notebooks' figures.

The benchmarks and the GPU check are not part of the package: ``benchmarks/`` in the repository.
"""

from __future__ import annotations

import importlib

_SUBMODULES = (
    "checks",
    "experiment",
    "jobs",
    "launch",
    "plotting",
    "processes",
    "report",
    "standins",
)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"crs.run.{name}")
    raise AttributeError(f"module 'crs.run' has no attribute {name!r}")
