"""The project's measurements, kept out of the installed ``crs`` package: run from the repository root.

* :mod:`benchmarks.bench`: ``python -m benchmarks.bench <what>``, costs, schedule quality, interval coverage,
  verdict stability, the demo's timings;
* :mod:`benchmarks.gpu_check`: the prepared GPU check (``make gpu-check``);
* :mod:`benchmarks.records`: every run's record (result, command, commit, machine, date) in ``benchmarks/records``;
* :mod:`benchmarks.tables`: the Markdown of each benchmark's result;
* :mod:`benchmarks.render`: ``python -m benchmarks.render`` writes ``docs/results/`` and the README's headline
  table from the records (``--check``: fail if a page differs from its records).
"""
