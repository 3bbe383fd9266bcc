"""``presel report RUN_DIR``: one self-contained HTML report of a run."""

from __future__ import annotations

import argparse

HELP = "write a self-contained HTML report of a run (tasks, budget, clusters, maps, image grids, timings, losses)"
DESCRIPTION = (HELP + ". Every input is optional: a stage that did not run shows a 'not run' note. "
               "The file needs no network: plots and thumbnails are embedded.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by presel run / presel demo")
    p.add_argument("--out", default=None, help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--pool", default=None,
                   help="pool manifest whose folder holds the images, when they moved since the run (for thumbnails)")
    p.add_argument("--image-root", default=None,
                   help="folder the selection's image paths are relative to, when it moved since the run "
                        "(default: the image root the run recorded)")
    p.add_argument("--title", default=None, help="title shown in the report (default: the run directory's name)")
    p.add_argument("--screenshot", default=None, metavar="PNG",
                   help="also save a PNG of the top of the page, rendered offline by headless Chromium (for a README)")
    p.add_argument("--screenshot-size", default="1280x2400", metavar="WxH", help="screenshot size in pixels")


def run(args: argparse.Namespace) -> int:
    import re

    from presel.errors import PreselError
    from presel.report.html import build_report, screenshot

    m = re.fullmatch(r"(\d+)x(\d+)", args.screenshot_size.strip().lower())
    if m is None:
        raise PreselError(f"--screenshot-size {args.screenshot_size!r} must look like 1280x2400 (width x height in pixels)")
    path = build_report(args.run_dir, args.out, pool=args.pool, image_root=args.image_root, title=args.title)
    print(path)
    if args.screenshot:
        print(screenshot(path, args.screenshot, width=int(m[1]), height=int(m[2])))
    return 0
