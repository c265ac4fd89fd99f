"""The tutorial site (crs.run.publish) and the JupyterLab entry (make lab)."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from crs.run.publish import build_site, figure_outputs

ROOT = Path(__file__).resolve().parents[1]


def _notebook(cells):
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _code(source, images=0):
    outputs = [{"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo="}, "metadata": {}}] * images
    return {"cell_type": "code", "source": source, "outputs": outputs, "metadata": {}, "execution_count": 1}


def test_figure_outputs_counts_saved_and_shown_figures():
    nb = _notebook(
        [
            {"cell_type": "markdown", "source": "save_figure( in prose is not a figure", "metadata": {}},
            _code("%matplotlib inline\nfig = plot()\ncrs.run.plotting.save_figure(fig, 'a.png')", images=1),
            _code("save_figure(f, 'b.png')\nif more:\n    save_figure(g, 'c.png')", images=0),
            _code("print(1)"),
        ]
    )
    assert figure_outputs(nb) == [
        dict(cell=1, expected=1, conditional=0, found=1),
        dict(cell=2, expected=1, conditional=1, found=0),
    ]


def test_the_site_refuses_runs_it_cannot_publish(tmp_path):
    with pytest.raises(ValueError, match="No run folder"):
        build_site(tmp_path / "missing")
    with pytest.raises(ValueError, match="No executed notebook"):
        build_site(tmp_path)
    (tmp_path / "00_base_model.ipynb").write_text(json.dumps(_notebook([_code("save_figure(fig, 'a.png')")])))
    with pytest.raises(ValueError, match="without the inline backend"):
        build_site(tmp_path)
    assert not (tmp_path / "site").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, data=None):
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow  # starts a JupyterLab server and a kernel
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").is_file(), reason="make lab needs the project's .venv")
def test_make_lab_serves_the_notebooks_with_the_project_kernel(tmp_path):
    """`make lab` (README, "Study in JupyterLab") starts JupyterLab on notebooks/; a kernel it starts for the
    notebooks (their kernelspec, python3) runs the project's .venv python."""
    port, token = _free_port(), "crs-test-token"
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_ARGS=--no-browser --port={port} --IdentityProvider.token={token}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail("make lab stopped: " + (tmp_path / "lab.log").read_text()[-2000:])
            try:
                contents = _get(f"{base}/api/contents?token={token}")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer in 60 s: " + (tmp_path / "lab.log").read_text()[-2000:])
        names = {item["name"] for item in contents["content"]}
        assert {"00_base_model.ipynb", "05_evaluation.ipynb"} <= names
        nb = _get(f"{base}/api/contents/02_schedule_optimization.ipynb?token={token}")
        kernel_name = nb["content"]["metadata"]["kernelspec"]["name"]
        assert kernel_name in _get(f"{base}/api/kernelspecs?token={token}")["kernelspecs"]
        kernel = _get(f"{base}/api/kernels?token={token}", json.dumps({"name": kernel_name}).encode())
        argv = None
        for _ in range(40):  # the kernel process: its connection file names the kernel id
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes().split(b"\0")
                except OSError:
                    continue
                if any(kernel["id"].encode() in a for a in args):
                    argv = [a.decode() for a in args if a]
                    break
            if argv:
                break
            time.sleep(0.25)
        assert argv, "no kernel process found"
        # the venv's interpreter by its own path (resolving the link would accept the system python it points to)
        assert os.path.abspath(argv[0]) == os.path.abspath(ROOT / ".venv" / "bin" / "python"), argv
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow  # a Sphinx build of every page, then Chromium
def test_the_documentation_site_builds_offline_and_reads_in_a_browser(tmp_path):
    """`python -m crs docs`: docs/ and the committed notebooks as one site, the API generated from the docstrings,
    the results pages; opened in headless Chromium: every formula typeset, every image loaded, no dead link."""
    from crs.run.publish import CHROMIUM_HINT, browser_check, build_docs, check_report, find_chromium

    index = build_docs(ROOT, tmp_path / "site", log=lambda *_: None)
    site = index.parent
    assert (site / "docs" / "index.html").is_file() and "docs/index.html" in index.read_text()
    assert len(list((site / "notebooks").glob("0*.html"))) == 6
    api = (site / "docs" / "reference" / "api.html").read_text()
    assert 'id="crs.rate.estimate_rate"' in api and 'id="crs.search.search_schedule"' in api
    assert (site / "docs" / "results" / "quality.html").is_file()
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(f"no Chromium for the browser check: {CHROMIUM_HINT}")
    result = browser_check(site, chromium)
    assert check_report(result) == []
    assert len(result["pages"]) >= 25 and sum(p["typeset"] for p in result["pages"]) > 50
