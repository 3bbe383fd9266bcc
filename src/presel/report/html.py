"""``presel report``: one self-contained HTML file describing a run.

The report reads only what the stages wrote into the run directory, through the typed readers of
:mod:`presel.report.data` (the schema of each output is named there); every output is optional and a
section whose input is missing says "not run" instead of failing. :mod:`presel.report.view` computes
what each section shows; jinja2 templates (``templates/``, autoescaped) render it, with the CSS and JS
of ``static/`` inlined. The HTML has no external reference: plots and thumbnails are ``data:`` URIs.
It is written atomically (default ``run_dir/report.html``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.report.data import RunOutputs
from presel.report.view import MAX_TASK_PANELS, SECTIONS, NotRun, View

__all__ = ["MAX_TASK_PANELS", "SECTIONS", "build_report", "find_chromium", "render_report", "screenshot"]


def _environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise PreselError("the report needs jinja2 and matplotlib: pip install 'presel[report]'") from None
    env = jinja2.Environment(loader=jinja2.PackageLoader("presel.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"], default=True),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["max_panels"] = MAX_TASK_PANELS
    return env


def _static(name: str) -> str:
    from importlib.resources import files

    return files("presel.report").joinpath("static", name).read_text(encoding="utf-8")


def _failed(e: Exception) -> tuple[str, str]:
    """(status, message) of a section that could not be computed or rendered."""
    if isinstance(e, NotRun):
        return "not-run", f"Not run: {e}"
    if isinstance(e, PreselError):
        return "not-run", f"Could not be drawn: {e}"
    return "error", f"Could not be drawn ({type(e).__name__}: {e}); please report this."


def _sections(view: View, env: Any) -> list[dict[str, Any]]:
    """Each section's context, then its HTML (after all are computed: the overview lists every unreadable
    output). A missing input or a failure, in either step, becomes the section's message."""
    ctx: dict[str, Any] = {}
    out = []
    for sid, title, fn in SECTIONS:
        try:
            ctx[sid] = fn(view)
            out.append({"id": sid, "title": title, "status": "ok"})
        except Exception as e:  # one broken section must not cost the whole report
            status, msg = _failed(e)
            out.append({"id": sid, "title": title, "status": status, "message": msg})
    for s in out:
        if s["status"] == "ok":
            try:
                s["body"] = env.get_template(f"sections/{s['id']}.html").render(c=ctx[s["id"]])
            except Exception as e:
                s["status"], s["message"] = _failed(e)
    return out


def render_report(view: View, title: str | None = None, map_href: str | None = None) -> str:
    """The report page as one HTML string."""
    from presel import __version__

    env = _environment()
    run_dir = view.out.run_dir.resolve()
    return env.get_template("report.html").render(
        title=title or run_dir.name, run_dir=str(run_dir), sections=_sections(view, env), version=__version__,
        css=_static("report.css"), js_head=_static("report-head.js"), js=_static("report.js"),
        map_href=map_href)


def build_report(run_dir: str | Path, out: str | Path | None = None, *, pool: str | Path | None = None,
                 image_root: str | Path | None = None, title: str | None = None) -> Path:
    """Write the self-contained HTML report of ``run_dir`` (default ``run_dir/report.html``); return its path.

    ``image_root``: the folder the selection's image paths are relative to, when the one the run recorded
    has moved; ``pool``: a pool manifest whose folder is that root (the default of ``presel run``).
    """
    from presel.io.atomic import atomic_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PreselError(f"{run_dir}: run directory not found; pass the --out folder of presel run / presel demo")
    if pool is not None and not Path(pool).exists():
        raise PreselError(f"--pool {pool}: file not found")
    if image_root is not None and not Path(image_root).is_dir():
        raise PreselError(f"--image-root {image_root}: folder not found")
    view = View(RunOutputs(run_dir), image_root=Path(image_root) if image_root else None,
                pool=Path(pool) if pool is not None else None)
    out = Path(out) if out is not None else run_dir / "report.html"
    page = render_report(view, title=title, map_href=_map_href(run_dir, out))
    if out.is_dir():
        raise PreselError(f"--out {out} is a folder; name the HTML file to write, e.g. {out / 'report.html'}")
    with atomic_file(out) as f:
        f.write(page)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(out, 0o666 & ~mask)  # a report is for sharing: ordinary file permissions, not mkstemp's 0600
    return out


def _map_href(run_dir: Path, out: Path) -> str | None:
    """The link from the report at ``out`` to the run's map (``presel map``), when it has one."""
    index = run_dir / "map" / "index.html"
    if not index.is_file():
        return None
    from urllib.parse import quote

    return quote(os.path.relpath(index.resolve(), out.resolve().parent).replace(os.sep, "/"))


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")


def find_chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(report: str | Path, png: str | Path, *, width: int = 1280, height: int = 2400,
               timeout: float = 120.0) -> Path:
    """PNG screenshot (top ``height`` px) of a report page with headless Chromium, offline (e.g. for a README)."""
    import subprocess
    import tempfile

    exe = find_chromium()
    if exe is None:
        raise PreselError("--screenshot needs Chromium: install it (Debian: apt-get install chromium; "
                          "or bash scripts/system-deps.sh)")
    if width < 200 or height < 200:
        raise PreselError(f"screenshot size {width}x{height} is too small; use at least 200x200")
    report, png = Path(report).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="presel-chromium-") as prof:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={prof}", f"--window-size={width},{height}",
               "--virtual-time-budget=5000", f"--screenshot={png}", report.as_uri()]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 env={**os.environ, "HOME": prof})
        except subprocess.TimeoutExpired:
            raise PreselError(f"chromium did not finish the screenshot of {report} within {timeout:.0f} s") from None
    if not png.is_file():
        raise PreselError(f"chromium wrote no screenshot of {report}: {res.stderr.strip()[-300:]}")
    return png

