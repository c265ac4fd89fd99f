"""Publish a run as a static tutorial site: ``python -m crs publish runs/demo`` (``make site``); build the
documentation (``docs/`` and the committed notebooks) as one: ``python -m crs docs`` (``make docs``).

The site is built with Sphinx and myst-nb from the run's executed notebooks, as they are (nothing is
re-executed): a landing page (what CRS is, the summary table with its verdicts, the main figures) and one page
per stage with its prose, code, inline figures and formulas, linked by a table of contents and previous / next
links. Formulas are typeset by MathJax 3 copied from the ``sphinx-mathjax-offline`` package (SVG output: no web
fonts), never fetched from a CDN, so the folder works from disk or any static host, offline.

:func:`browser_check` opens the built site in headless Chromium and reports what a reader would see: formulas
left raw, figures that did not load, links that lead nowhere.
"""

from __future__ import annotations

import ast
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import unquote

from crs.run.report import FIGURES, intervals_note, summary_markdown

__all__ = [
    "browser_check",
    "build_docs",
    "build_site",
    "check_report",
    "figure_outputs",
    "find_chromium",
    "CHROMIUM_HINT",
]

CHROMIUM_HINT = "install Debian's chromium (apt-get update && apt-get install -y chromium) or set CRS_CHROMIUM"
# MathJax 3 (from the sphinx-mathjax-offline package) in its SVG build: glyphs are drawn from paths in the
# JavaScript, so no web font has to load (browsers refuse fonts to file:// pages). The TeX extensions beside it are
# what MathJax's autoload fetches for rarer macros.
MATHJAX_PARTS = ("tex-svg.js", "input/tex/extensions")

LANDING = """\
# Constant Rate Scheduling: {name}

Constant Rate Scheduling (CRS; Okada et al., arXiv 2411.12188) chooses the noise schedule of a diffusion model
so that the distribution of the noised data changes at a constant rate. A discrepancy $D$ between the noised
distributions at neighbouring noise levels (FID-based, data-prediction-based or noise-prediction-based) gives a
velocity $v(\\alpha)$ along the process; CRS makes $d\\alpha/dt \\propto v(\\alpha)^{{-\\xi}}$, so the schedule's
time is the normalised cumulative

$$
t = F(\\sigma) = \\frac{{1}}{{Z}}\\int_{{\\sigma_{{\\min}}}}^{{\\sigma}} v^{{\\xi}}\\,|d\\alpha|,
\\qquad F(\\sigma_{{\\max}}) = 1,
$$

and a sampler with $n$ steps takes $\\sigma_i = F^{{-1}}\\big(1 - i/(n-1)\\big)$, $i = 0, \\dots, n-1$, then 0.

This site is the executed tutorial of the run `{name}`: each stage below is a notebook run with papermill,
shown with its prose, code, figures and outputs. The summary says where CRS wins and where it loses against
the schedules people use today, with the intervals behind each verdict.

## Summary: CRS against the best baseline

{summary}

## Main figures

{figures}

## The stages

```{{toctree}}
:maxdepth: 1

{toc}
```
"""


def _saves(source: str) -> tuple[int, int]:
    """``save_figure(`` calls in a cell: (unconditional, inside a branch or loop), by the cell's syntax tree."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return source.count("save_figure("), 0

    def calls(node) -> int:
        return sum(
            isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == "save_figure"
            for n in ast.walk(node)
        )

    branching = (ast.If, ast.For, ast.While, ast.Try, ast.Match, ast.AsyncFor)
    plain = sum(calls(stmt) for stmt in tree.body if not isinstance(stmt, branching))
    return plain, sum(calls(stmt) for stmt in tree.body if isinstance(stmt, branching))


def figure_outputs(notebook) -> list[dict]:
    """Every code cell of a notebook that saves figures: ``{cell, expected, conditional, found}``: the figures it
    saves unconditionally (``save_figure`` calls outside any branch or loop), those it may save, and the images
    its outputs hold. An executed notebook shows its figures when ``found >= expected`` in every row."""
    nb = json.loads(Path(notebook).read_text()) if not isinstance(notebook, dict) else notebook
    rows = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        expected, conditional = _saves("".join(cell["source"]))
        found = sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))
        if expected or conditional or found:
            rows.append(dict(cell=i, expected=expected, conditional=conditional, found=found))
    return rows


def _mathjax_source() -> Path:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("sphinx-mathjax-offline")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ValueError(
            "The site needs the sphinx-mathjax-offline package (MathJax 3 files): pip install -r requirements.txt"
        ) from exc
    return Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))


def _copy_mathjax(dest: Path) -> None:
    source = _mathjax_source()
    for part in MATHJAX_PARTS:
        src = source / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / part)


# code wraps instead of scrolling sideways at normal widths; long tables scroll inside themselves
CSS = """pre, div.highlight pre { white-space: pre-wrap; overflow-wrap: anywhere; }
table.docutils { display: block; overflow-x: auto; }
"""


def _conf(project: str, root_doc: str = "index", autodoc: bool = False, description: str = "") -> str:
    extensions = ["myst_nb"] + (["sphinx.ext.autodoc", "sphinx.ext.napoleon"] if autodoc else [])
    return (
        (AUTODOC_SETUP if autodoc else "")
        .join(_CONF.split("<setup>"))
        .format(project=project, root_doc=root_doc, extensions=extensions, description=description)
    )


_CONF = """# Generated by crs.run.publish.
project = {project!r}
author = "crs"
root_doc = {root_doc!r}
extensions = {extensions!r}
nb_execution_mode = "off"  # the notebooks were executed already; their outputs are shown as they are
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
source_suffix = {{".md": "myst-nb", ".ipynb": "myst-nb"}}
exclude_patterns = ["_build", "**/_build", "**/.ipynb_checkpoints", "**/runs"]
html_theme = "alabaster"
html_title = project
html_static_path = ["_static"]
html_css_files = ["wrap.css"]
html_extra_path = ["_extra"]
html_copy_source = False
html_show_sourcelink = False
html_sidebars = {{"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}}
html_theme_options = {{
    "description": {description!r},
    "show_relbars": True,
    "page_width": "1240px",
    "body_max_width": "none",
}}
mathjax_path = "mathjax/tex-svg.js"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
suppress_warnings = ["mystnb.unknown_mime_type", "myst.xref_missing", "myst.header", "toc.not_included"]
<setup>"""

# with autodoc: shapes such as (B, *shape) and **options in docstrings are text, not reStructuredText emphasis
AUTODOC_SETUP = r"""

def setup(app):
    import re

    star = re.compile(r"(?<=[(\[])(\*{{1,2}})(?=\w)|(?<=, )(\*{{1,2}})(?=\w)")

    def escape_stars(app, what, name, obj, options, lines):
        for i, line in enumerate(lines):  # outside ``literals`` only
            parts = line.split("``")
            parts[::2] = [star.sub(lambda m: "\\" + "\\".join(m.group(0)), p) for p in parts[::2]]
            lines[i] = "``".join(parts)

    app.connect("autodoc-process-docstring", escape_stars)
"""


def _sphinx(src: Path, out: Path, conf: str, what: str) -> Path:
    """Build ``src`` (its static files, MathJax and the wrapping CSS added) with ``conf`` into ``out``, replacing an
    earlier site only once the new one is complete."""
    from sphinx.application import Sphinx

    _copy_mathjax(src / "_static" / "mathjax")
    (src / "_static" / "wrap.css").write_text(CSS)
    (src / "_extra").mkdir(exist_ok=True)
    (src / "conf.py").write_text(conf)
    build = src.parent / "build"
    app = Sphinx(
        str(src),
        str(src),
        str(build / "html"),
        str(build / "doctrees"),
        "html",
        status=None,
        warning=None,
        freshenv=True,
        verbosity=0,
    )
    app.build()
    if app.statuscode:
        raise ValueError(f"The site build of {what} failed (Sphinx status {app.statuscode}).")
    html_dir = build / "html"
    (html_dir / ".buildinfo").unlink(missing_ok=True)
    staged = out.with_name(out.name + ".new")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(html_dir, staged)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staged.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out / "index.html"


def _figures_markdown(run_dir: Path, dest: Path) -> str:
    blocks = []
    shown = [(name, caption) for name, caption in FIGURES if (run_dir / name).is_file()]
    shown += [
        (p.name, f"{p.stem.removeprefix('metric_')} against nfe (05)") for p in sorted(run_dir.glob("metric_*.png"))
    ]
    for name, caption in shown:
        (dest / "figures").mkdir(exist_ok=True)
        shutil.copyfile(run_dir / name, dest / "figures" / name)
        blocks.append(f"```{{figure}} figures/{name}\n:width: 75%\n\n{caption}\n```")
    return "\n\n".join(blocks) or "No figures in this run."


def build_site(run_dir, out=None, log=print) -> Path:
    """Build the static site of ``run_dir`` into ``out`` (default ``run_dir/site``); returns ``out/index.html``.

    The previous site is replaced only once the new one is complete. Raises ValueError when the run has no
    executed notebook, or when a notebook lacks the figures its cells save (executed with a non-inline backend:
    rerun it; since the notebooks set ``%matplotlib inline`` this only happens to runs made before that).
    """

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"No run folder at {str(run_dir)!r}.")
    notebooks = sorted(run_dir.glob("0*_*.ipynb"))
    if not notebooks:
        raise ValueError(f"No executed notebook in {str(run_dir)!r}: run the experiment first (python -m crs run).")
    for nb in notebooks:
        missing = [r for r in figure_outputs(nb) if r["found"] < r["expected"]]
        if missing:
            raise ValueError(
                f"{nb.name} shows {sum(r['found'] for r in missing)} of the {sum(r['expected'] for r in missing)} "
                f"figures its cells {[r['cell'] for r in missing]} save: it was executed without the inline backend; "
                "rerun its stage."
            )
    out = Path(out) if out is not None else run_dir / "site"
    name = run_dir.resolve().name
    with tempfile.TemporaryDirectory(prefix="crs-site-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for nb in notebooks:
            shutil.copyfile(nb, src / nb.name)
        metrics_path = run_dir / "metrics.json"
        summary = "This run has no evaluation (metrics.json is missing)."
        if metrics_path.is_file():
            metrics = json.loads(metrics_path.read_text())
            summary = f"Features: `{metrics.get('features')}`.\n\n" + summary_markdown(metrics)
            summary = summary.replace(intervals_note(metrics), "")  # the note again, as its own paragraph
            summary += f"\n\n{intervals_note(metrics)}"
        (src / "index.md").write_text(
            LANDING.format(
                name=name,
                summary=summary,
                figures=_figures_markdown(run_dir, src),
                toc="\n".join(nb.stem for nb in notebooks),
            )
        )
        conf = _conf("CRS: " + name, description="Constant Rate Scheduling, executed step by step")
        index = _sphinx(src, out, conf, repr(str(run_dir)))
    log(f"site: {index} ({len(notebooks)} stage pages)")
    return index


REDIRECT = """<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="0; url=docs/index.html"><title>crs documentation</title></head>
<body><a href="docs/index.html">crs documentation</a></body></html>
"""


def build_docs(root=".", out=None, log=print) -> Path:
    """Build the documentation site of the repository at ``root``: ``docs/`` (guides, concepts, reference with the
    Python API from the docstrings, results) and the committed notebooks (the tutorial, with their stored outputs,
    not re-executed), laid out as in the repository so that relative links between them work; into ``out``
    (default ``root/docs/_build/site``). Returns the site's ``index.html`` (a redirect to ``docs/index.html``)."""
    root = Path(root)
    if not (root / "docs" / "index.md").is_file():
        raise ValueError(f"No docs/index.md under {str(root)!r}: give the repository's root.")
    out = Path(out) if out is not None else root / "docs" / "_build" / "site"
    with tempfile.TemporaryDirectory(prefix="crs-docs-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root / "docs", src / "docs", ignore=shutil.ignore_patterns("_build"))
        (src / "notebooks").mkdir()
        notebooks = sorted((root / "notebooks").glob("0*_*.ipynb"))
        for nb in notebooks:
            shutil.copyfile(nb, src / "notebooks" / nb.name)
        (src / "_extra").mkdir()
        (src / "_extra" / "index.html").write_text(REDIRECT)
        conf = _conf("crs", root_doc="docs/index", autodoc=True, description="Constant Rate Scheduling")
        index = _sphinx(src, out, conf, "the documentation")
    log(f"docs: {index} ({len(notebooks)} tutorial notebooks)")
    return index


def check_report(result: dict) -> list[str]:
    """The problems a :func:`browser_check` found, one line each (empty: the site reads as it should)."""
    problems = [
        f"{p['page']}: {p['raw_math']} raw formulas, {len(p['broken_images'])} broken images, "
        f"{p['mathjax_errors']} MathJax errors, {p['typeset']} of {p['formulas']} formulas typeset"
        for p in result["pages"]
        if p["raw_math"] or p["broken_images"] or p["mathjax_errors"] or p["typeset"] < p["formulas"]
    ]
    return problems + [f"{page}: dead link {link}" for page, link in result["dead_links"]]


# ----------------------------------------------------------------------------- the browser check
def find_chromium() -> str | None:
    """The Chromium executable: ``$CRS_CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome``."""
    found = os.environ.get("CRS_CHROMIUM")
    if found:
        return found if Path(found).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHECK_PAGE = """<!doctype html><html><head><meta charset="utf-8"></head><body><pre id="result">pending</pre>
<script>
const pages = %s;
const results = [];
function collect(frame, page) {
  const doc = frame.contentDocument, win = frame.contentWindow;
  const clone = doc.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, .highlight, .output").forEach(e => e.remove());
  const text = clone.textContent;
  const imgs = Array.from(doc.images);
  results.push({
    page: page,
    title: doc.title,
    raw_math: (text.match(/\\$\\$|\\\\\\(|\\\\\\[|\\\\frac|\\\\sigma/g) || []).length,
    formulas: doc.querySelectorAll("span.math, div.math").length,
    typeset: doc.querySelectorAll("mjx-container").length,
    mathjax_errors: doc.querySelectorAll("mjx-merror, [data-mjx-error]").length,
    images: imgs.length,
    broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    links: Array.from(doc.querySelectorAll("a[href]")).map(a => a.href),
  });
}
function doc_has_math(frame) {
  return frame.contentDocument.querySelector('script[src*="mathjax"]') !== null;
}
function next(i) {
  if (i >= pages.length) { document.getElementById("result").textContent = JSON.stringify(results); return; }
  const frame = document.createElement("iframe");
  frame.style.width = "1200px"; frame.style.height = "800px";
  frame.onload = () => {
    const win = frame.contentWindow;
    const done = () => { collect(frame, pages[i]); frame.remove(); next(i + 1); };
    const ready = () => win.MathJax && win.MathJax.startup && win.MathJax.startup.promise;
    const wait = (tries) => {  // the MathJax script is async: wait for it, then for its typesetting
      if (ready()) { win.MathJax.startup.promise.then(done, done); }
      else if (tries > 0 && doc_has_math(frame)) { setTimeout(() => wait(tries - 1), 100); }
      else { done(); }
    };
    wait(100);
  };
  frame.src = pages[i];
  document.body.appendChild(frame);
}
window.onload = () => next(0);
</script></body></html>
"""


def browser_check(site, chromium: str | None = None, timeout: float = 240) -> dict:
    """Open every page of a built site in headless Chromium and report what it shows.

    Each page is loaded (from disk, offline) in a frame of a check page; once MathJax has finished, the page's
    rendered text outside code blocks is searched for raw TeX (``$$``, ``\\(``, ``\\[``, ``\\frac``, ``\\sigma``),
    its typeset formulas and images are counted, images that did not load are listed, and every link the browser
    resolved is checked: a link into the site must name an existing file, and its ``#fragment`` an id in it.

    Returns ``{"pages": [per page: title, raw_math, formulas, typeset, mathjax_errors, images,
    broken_images, links], "dead_links": [(page, link)], "external_links": [links out of the site]}``.
    Raises ValueError without Chromium (:data:`CHROMIUM_HINT`).
    """
    chromium = chromium or find_chromium()
    if not chromium:
        raise ValueError(f"No Chromium to check the site with: {CHROMIUM_HINT}.")
    site = Path(site).resolve()
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)
    if not pages:
        raise ValueError(f"No HTML pages under {str(site)!r}: build the site first (python -m crs publish).")
    with tempfile.TemporaryDirectory(prefix="crs-check-") as tmp:
        check = Path(tmp) / "check.html"
        check.write_text(CHECK_PAGE % json.dumps([p.as_uri() for p in pages]))
        proc = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--allow-file-access-from-files",
                f"--user-data-dir={tmp}/profile",
                "--virtual-time-budget=120000",
                "--dump-dom",
                check.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    if not found or found.group(1) == "pending":
        raise ValueError(f"Chromium did not finish the check (exit {proc.returncode}): {proc.stderr[-2000:]}")
    results = json.loads(html.unescape(found.group(1)))
    dead, external, ids = [], set(), {}
    for page in results:
        for link in page["links"]:
            if not link.startswith("file:"):
                external.add(link)
                continue
            target, _, fragment = link[len("file://") :].partition("#")
            path = Path(unquote(target.partition("?")[0]))
            if not path.is_file():
                dead.append((page["page"], link))
            elif fragment and path.suffix == ".html":
                if path not in ids:
                    ids[path] = set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))
                if fragment not in ids[path]:
                    dead.append((page["page"], link))
    return {"pages": results, "dead_links": dead, "external_links": sorted(external)}
