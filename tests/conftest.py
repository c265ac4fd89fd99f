"""Shared test settings: offline, headless, deterministic; and how tests share the cores.

``make test`` runs the suite in parallel processes (pytest-xdist ``-n``, scheduled by
:func:`pytest_xdist_make_scheduler` below): a test file's tests stay in one process, in order, so a module's fixtures
(a run made once and checked by several tests) are made once; the committed notebooks' cells all run in one process,
in order (nbval: one kernel per notebook, and each notebook reads its predecessor's run folder). Each process gets
its share of the cores for torch and the stages' kernels, so processes do not thrash.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # set before torch is imported; kernels and launches inherit it
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(share))

import matplotlib  # noqa: E402
import pytest  # noqa: E402

matplotlib.use("Agg")


# The work units that take longest on 2 cores (minutes), started first so that none is left running alone at the end
# (longest processing time first); the other units follow with the most tests first.
LONGEST_FIRST = (
    "notebooks",
    "tests/test_notebooks.py",
    "tests/test_pipeline.py",
    "tests/test_dry_runs.py",
    "tests/test_dry_runs_conditional.py",
    "tests/test_dry_runs_flow.py",
    "tests/test_distributed.py",
    "tests/test_training.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """One work unit per test file, and one for all the committed notebooks (run in order: each reads the run folder
    its predecessor wrote), so that tests sharing a module's fixtures (a run made once) stay in one process; the
    longest units first (:data:`LONGEST_FIRST`).

    pytest-xdist's ``--dist loadgroup`` would group with marks, but with pytest 9 its group suffix no longer reaches
    the node ids, so the grouping is written here on the node ids themselves, and the order in :meth:`schedule` (as
    ``LoadScopeScheduling.schedule``, the queue ordered here). Whatever ``--dist`` says (but ``each``), this
    scheduler is the one used.
    """
    if config.getvalue("dist") == "each":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "notebooks" if path.startswith("notebooks/") else path

        def schedule(self) -> None:
            assert self.collection_is_completed
            if self.collection is not None:
                for node in self.nodes:
                    self._reschedule(node)
                return
            if not self._check_nodes_have_same_collection():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = list(next(iter(self.registered_collections.values())))
            if not self.collection:
                return
            units: dict[str, dict[str, bool]] = {}
            for nodeid in self.collection:
                units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
            rank = {scope: i for i, scope in enumerate(LONGEST_FIRST)}
            for scope in sorted(units, key=lambda u: (rank.get(u, len(rank)), -len(units[u]))):
                self.workqueue[scope] = units[scope]
            for _ in range(len(self.nodes) - len(self.workqueue)):  # more workers than work: shut the rest down
                unused, _assigned = self.assigned_work.popitem()
                unused.shutdown()
            for node in self.nodes:
                self._assign_work_unit(node)
            if not self.workqueue:
                for node in self.nodes:
                    node.shutdown()

    return FileScheduling(config, log)


@pytest.fixture
def toy_search_options():
    """Search options small enough for a unit test of the quality and head-to-head benchmarks, per method."""
    return {
        "teacher_steps": 16,
        "crs": {"grid_size": 8, "n_samples": 64},
        "crs-select": {"grid_size": 8, "n_samples": 64, "measures": ["data"], "xis": [1.0]},
        "gits": {"grid": 12},
        "optimal": {"init": "best", "maxiter": 2},
        "optimal-free": {"init": "best", "maxiter": 2},
        "ld3": {"pairs": 8, "rounds": [1, 0]},
        "oss": {"grid": 12},
        "ays-opt": {"mc_samples": 16, "sweeps": 1},
    }
