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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """One work unit per test file, and one for all the committed notebooks (run in order: each reads the run folder
    its predecessor wrote), so that tests sharing a module's fixtures (a run made once) stay in one process.

    pytest-xdist's ``--dist loadgroup`` would do this with marks, but with pytest 9 its group suffix no longer
    reaches the node ids, so the grouping is written here on the node ids themselves. Units with the most tests go
    first (``loadscope``'s order). Whatever ``--dist`` says (but ``each``), this scheduler is the one used.
    """
    if config.getvalue("dist") == "each":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "notebooks" if path.startswith("notebooks/") else path

    return FileScheduling(config, log)
