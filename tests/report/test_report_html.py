"""The HTML report, built from what the stages really write: a real tiny `presel run` (every stage, tiny
models) and selections written by `select_to_dir`. Self-contained, tolerant, and rendered by Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_run import DOLLAR_TASK

from presel.errors import PreselError
from presel.report.html import MAX_TASK_PANELS, SECTIONS, build_report
from presel.report.plots import pca_2d

SECTION_IDS = [s for s, _, _ in SECTIONS]
PLOTTED = ("budget", "irs", "clusters", "centrality", "maps", "timings", "training")


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.urls: list[tuple[str, str, str]] = []
        self.scripts: list[dict] = []
        self.imgs = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "data-section" in a:
            self.sections[a["data-section"]] = a.get("data-status", "")
        if tag == "script":
            self.scripts.append(a)
        if tag == "img":
            self.imgs += 1
        for k in ("src", "href", "action", "poster", "data"):
            if a.get(k):
                self.urls.append((tag, k, a[k]))


def _parse(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    return p


def _section(text: str, sid: str) -> str:
    return re.search(rf'<section id="{sid}".*?</section>', text, re.S).group(0)


def _row(text: str, task: str) -> list[str]:
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", _section(text, "tasks"), re.S) if escape(task) + "<" in r)
    return re.findall(r'<td class="num">(.*?)</td>', row, re.S)


@pytest.fixture(scope="module")
def report(tiny_run) -> tuple[Path, str]:
    path = build_report(tiny_run)
    return path, path.read_text(encoding="utf-8")


def test_every_section_renders_from_a_real_run(tiny_run, report):
    path, text = report
    assert path == tiny_run / "report.html"
    st = _parse(text).sections
    assert list(st) == SECTION_IDS
    # no benchmark and no dedup stage in this run
    assert {s: v for s, v in st.items() if v != "ok"} == {"quality": "not-run", "neardup": "not-run"}
    # the task table carries the selection's own numbers (selection/summary.json, weights/task_weights.json)
    summary = json.loads((tiny_run / "selection" / "summary.json").read_text())
    weights = json.loads((tiny_run / "weights" / "task_weights.json").read_text())
    for task, s in summary["tasks"].items():
        nums = _row(text, task)
        assert nums[:4] == [f"{s['records']:,}", f"{s['images']:,}", str(s["reference"]), f"{weights[task]['score']:.3f}"]
        assert nums[-3:] == [str(s["clusters"]), str(s["quota"]), str(s["selected"])]
    foot = re.findall(r'<td class="num">(.*?)</td>', re.search(r"<tfoot>.*?</tfoot>", _section(text, "tasks"), re.S).group(0))
    assert foot[1] == f"{summary['totals']['distinct_images']:,}" and foot[-1] == str(summary["totals"]["selected"])
    # every stage's completion marker is a green chip
    chips = re.findall(r'<span class="chip ok">✓ (\w+)</span>', _section(text, "overview"))
    assert chips == ["reference", "annotate", "ref_model", "score", "weights", "embed", "select", "generate",
                     "final_model", "report"]
    gen = json.loads((tiny_run / "generate" / "summary.json").read_text())
    assert f"{gen['generated']} / {gen['selected']}" in _section(text, "generation")
    training = _section(text, "training")
    assert "<td>reference model</td>" in training and "<td>final model</td>" in training
    assert "<th class=\"num\">final_model</th>" in _section(text, "evaluation")


def test_task_names_with_dollars_are_plain_text_in_plots(report):
    """Issue 17 Low 9: a task name matplotlib would parse as mathtext draws as typed, in every plot."""
    _, text = report
    st = _parse(text).sections
    assert all(st[s] == "ok" for s in PLOTTED)
    assert _row(text, DOLLAR_TASK)  # and it is a row of the table, escaped as text


def test_gallery_finds_images_under_the_runs_image_root(tiny_run, report):
    """Issue 17 Low 10: pool.image_root apart from the manifest; the run's own report stage finds the images."""
    assert not (tiny_run.parent / "data" / "pool.jsonl").exists()
    inputs = json.loads((tiny_run / "selection" / "config.json").read_text())["inputs"]
    assert Path(inputs["image_root"]) == tiny_run.parent / "data"
    for text in (report[1], (tiny_run / "report" / "report.html").read_text(encoding="utf-8")):
        gallery = _section(text, "gallery")
        assert 'data-status="ok"' in gallery and "image<br>missing" not in gallery
        assert gallery.count("<img ") == gallery.count("<figure") > 0
        assert 'class="sel"' in gallery


def test_report_is_self_contained(report):
    _, text = report
    p = _parse(text)
    gallery = _section(text, "gallery")
    assert p.imgs == len(PLOTTED) + gallery.count("<img ")
    bad = [(t, k, u[:60]) for t, k, u in p.urls if not (u.startswith("data:") or u.startswith("#"))]
    assert bad == []
    assert all("src" not in s for s in p.scripts)
    assert not re.search(r"https?://", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text


def test_moved_images_and_image_root_option(tmp_path, tiny_run):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run, moved, ignore=shutil.ignore_patterns("*.safetensors", "report.html"))
    images = tmp_path / "images"
    shutil.copytree(tiny_run.parent / "data" / "images", images / "images")
    original = tiny_run.parent / "data"
    shutil.move(str(original), str(tmp_path / "gone"))
    try:
        text = build_report(moved).read_text()
        assert _parse(text).sections["gallery"] == "not-run" and "--image-root" in _section(text, "gallery")
        text = build_report(moved, image_root=images).read_text()
        assert _parse(text).sections["gallery"] == "ok" and "image<br>missing" not in text
    finally:
        shutil.move(str(tmp_path / "gone"), str(original))
    with pytest.raises(PreselError, match="--image-root"):
        build_report(moved, image_root=tmp_path / "nope")


def test_missing_outputs_give_not_run_notes(tmp_path, tiny_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _parse(build_report(empty).read_text(encoding="utf-8"))
    assert list(p.sections) == SECTION_IDS and set(p.sections.values()) == {"not-run"}
    # only the reference set and timings: those sections render, the rest say what they need
    part = tmp_path / "part"
    shutil.copytree(tiny_run / "reference", part / "reference")
    shutil.copy(tiny_run / "timings.json", part / "timings.json")
    text = build_report(part, tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    st = _parse(text).sections
    assert {s for s, v in st.items() if v == "ok"} == {"overview", "tasks", "timings"}
    assert "Not run: needs selection/assignments.parquet" in text
    ref = [json.loads(x) for x in (tiny_run / "reference" / "reference.jsonl").read_text().splitlines()]
    assert _row(text, DOLLAR_TASK)[2] == str(sum(r["task"] == DOLLAR_TASK for r in ref))


def test_malformed_outputs_name_the_file_and_cost_one_section(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.safetensors", "report.html"))
    (run / "irs" / "irs.parquet").write_bytes(b"garbage")
    summ = json.loads((run / "selection" / "summary.json").read_text())
    del summ["totals"]["budget"]
    (run / "selection" / "summary.json").write_text(json.dumps(summ))
    (run / "ref_model" / "train_log.jsonl").write_text('{"step": "one", "epoch": 0.5, "loss": 1.0}\n')
    (run / "weights" / "task_weights.json").write_text(json.dumps({"a": 0.5}))
    text = build_report(run).read_text(encoding="utf-8")
    st = _parse(text).sections
    assert st["irs"] == st["budget"] == "not-run"
    assert st["clusters"] == st["gallery"] == st["maps"] == st["training"] == "ok"  # other outputs still read
    assert "<td>reference model</td>" not in _section(text, "training")  # only the damaged log is left out
    problems = _section(text, "overview")
    for needle in (f"{run / 'irs' / 'irs.parquet'}: not a readable Parquet file",
                   f"{run / 'selection' / 'summary.json'}: totals: missing &#39;budget&#39;",
                   f"{run / 'ref_model' / 'train_log.jsonl'} line 1: &#39;step&#39; must be int",
                   f"{run / 'weights' / 'task_weights.json'}: a: expected a JSON object"):
        assert needle in problems
    assert "could not read it: " in _section(text, "budget")


def test_readers_refuse_other_key_names(tmp_path):
    from presel.report.data import read_generation, read_selection_summary, read_weights

    p = tmp_path / "summary.json"
    p.write_text(json.dumps({"per_task": [{"task": "a", "pool_size": 3}]}))  # not what presel select writes
    with pytest.raises(PreselError, match=f"{re.escape(str(p))}: missing 'tasks'"):
        read_selection_summary(p)
    assert read_selection_summary(tmp_path / "none.json") is None
    w = tmp_path / "w.json"
    w.write_text(json.dumps({"a": {"irs": 0.5, "weight": 1.0, "n": 2}}))
    with pytest.raises(PreselError, match="missing 'score'"):
        read_weights(w)
    g = tmp_path / "g.json"
    g.write_text("{not json")
    with pytest.raises(PreselError, match=f"{re.escape(str(g))}: not valid JSON"):
        read_generation(g)


def _selection_run(root: Path, tasks: dict[str, int], images: bool = False) -> Path:
    """A run directory holding a selection written by select_to_dir (uniform weights, random features);
    ``images``: with PNG files next to the manifest."""
    from presel.io.features import FeatureMatrix
    from presel.io.manifest import read_pool
    from presel.selection.select import SelectConfig, select_to_dir

    rows = [{"id": f"{t}-{i}", "image": f"{t}/{i}.png", "task": t} for t, n in tasks.items() for i in range(n)]
    root.mkdir(parents=True)
    for r in rows if images else []:
        (root / r["image"]).parent.mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), (len(r["id"]) * 20, 80, 160)).save(root / r["image"])
    (root / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = read_pool(root / "pool.jsonl")
    x = np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32)
    fm = FeatureMatrix([([r["image"] for r in rows], x)], source="synthetic")
    cfg = SelectConfig(budget=0.3, seed=0, task_weights="uniform", images_per_cluster=3)
    select_to_dir(pool, fm, None, None, cfg, root / "run" / "selection")
    return root / "run"


def test_many_tasks_are_capped_and_names_escaped(tmp_path):
    tasks = {f"t{t:02d}": 4 + t for t in range(MAX_TASK_PANELS + 6)}
    tasks["<b>bold</b> $x$"] = 6
    run = _selection_run(tmp_path / "many", tasks)
    text = build_report(run).read_text()
    st = _parse(text).sections
    assert st["centrality"] == st["clusters"] == st["tasks"] == st["budget"] == "ok"
    assert f"Showing the {MAX_TASK_PANELS} largest of {len(tasks)} tasks." in _section(text, "centrality")
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt; $x$" in text
    table = _section(text, "tasks")
    assert table.count("<tr>") == len(tasks) + 2  # header, tasks, total
    assert _row(text, "t29")[:2] == ["33", "33"]
    assert st["gallery"] == "not-run"  # the synthetic pool has no image files


def test_gallery_embeds_no_file_outside_the_image_root(tmp_path):
    run = _selection_run(tmp_path / "pool", {"a": 12, "b": 9}, images=True)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(secret)
    (tmp_path / "pool" / "a" / "0.png").unlink()
    (tmp_path / "pool" / "a" / "0.png").symlink_to(secret)  # a link in the image folder pointing out of it
    gallery = _section(build_report(run).read_text(), "gallery")
    assert 'data-status="ok"' in gallery and gallery.count("image<br>missing") == 1
    assert "1 image files could not be opened." in gallery


def test_a_failing_section_costs_only_itself(tmp_path, monkeypatch):
    import presel.report.html as rh

    run = _selection_run(tmp_path / "s", {"a": 12, "b": 9})

    def broken_context(view):
        return {}  # the template needs c.plot: rendering fails

    def broken_code(view):
        raise ZeroDivisionError("boom")

    sections = [(sid, t, broken_context if sid == "budget" else broken_code if sid == "clusters" else fn)
                for sid, t, fn in SECTIONS]
    monkeypatch.setattr(rh, "SECTIONS", tuple(sections))
    text = build_report(run).read_text()
    st = _parse(text).sections
    assert st["budget"] == st["clusters"] == "error" and st["tasks"] == st["centrality"] == "ok"
    assert "ZeroDivisionError: boom" in _section(text, "clusters") and "UndefinedError" in _section(text, "budget")


def test_selection_quality_section(tmp_path):
    run = _selection_run(tmp_path / "q", {"a": 12, "b": 9})
    bench = run / "bench"
    bench.mkdir()
    Image.new("RGB", (60, 40), (30, 90, 200)).save(bench / "quality.png")
    summary = [{"task": t, "method": m, "budget": 0.05, "classifier": "probe", "n": 5, "mean": mu,
                "ci_low": mu - 0.02, "ci_high": mu + 0.02}
               for t in ("a", "mean") for m, mu in (("presel", 0.61), ("random", 0.55))]
    (bench / "quality.json").write_text(json.dumps({"meta": {"seeds": 5}, "summary": summary, "rows": []}))
    sec = _section(build_report(run).read_text(), "quality")
    assert 'data-status="ok"' in sec and sec.count("<img ") == 1
    assert sec.count("<tr>") == 3 and "0.61" in sec and "<td>a</td>" not in sec  # the mean rows only
    (bench / "quality.json").write_text("{broken")
    sec = _section(build_report(run).read_text(), "quality")
    assert 'data-status="ok"' in sec and "<table" not in sec
    (bench / "quality.png").unlink()
    assert 'data-status="not-run"' in _section(build_report(run).read_text(), "quality")


def test_cli(tmp_path):
    from presel.cli import main

    run = _selection_run(tmp_path / "cli", {"a": 12, "b": 9})
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--title", "demo <run>"]) == 0
    assert "presel report <span>· demo &lt;run&gt;</span>" in out.read_text()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["report", str(run), "--out", str(tmp_path)]) == 2


def test_pca_2d_finds_the_main_axis():
    rng = np.random.default_rng(1)
    t = rng.normal(size=200)
    x = np.outer(t, [3.0, 0.0, 4.0]) + 0.01 * rng.normal(size=(200, 3))
    xy, (r1, r2) = pca_2d(x)
    assert r1 > 0.99 and r2 < 0.01
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.999
    assert np.allclose(np.abs(xy[:, 0]), np.abs(t * 5.0 - np.mean(t * 5.0)), atol=0.1)


# ----------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000", *extra, url]
    return subprocess.run([CHROMIUM, *flags], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp)})


def _console_errors(stderr: str) -> list[str]:
    """Console lines chromium logs with --enable-logging=stderr (the report itself never logs)."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: run `bash scripts/system-deps.sh` (CI does)")
def test_chromium_renders_every_section_without_errors(report, tmp_path):
    path, text = report
    res = _chromium(path.resolve().as_uri(), tmp_path, "--dump-dom")
    dom = res.stdout
    root = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<html([^>]*)>", dom).group(1))) if "<html" in dom else {}
    assert root.get("data-loaded") == "yes", res.stderr[-2000:]
    assert root["data-sections"] == str(len(SECTIONS)) and root["data-sections-ok"] == str(len(SECTIONS) - 2)
    assert root["data-broken-images"] == "0" and root["data-images"] == str(_parse(text).imgs)
    assert "data-js-errors" not in root
    assert re.search(r'<div id="js-errors"></div>', dom)
    assert _console_errors(res.stderr) == []
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom

    from presel.cli import main

    shot = tmp_path / "report.png"  # through the CLI's --screenshot (presel.report.html.screenshot)
    assert main(["report", str(path.parent), "--out", str(tmp_path / "r.html"), "--screenshot", str(shot),
                 "--screenshot-size", "1280x1800"]) == 0
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (1800, 1280) and img.std() > 20  # a page with content, not a blank canvas
    assert main(["report", str(path.parent), "--out", str(tmp_path / "r.html"), "--screenshot", str(shot),
                 "--screenshot-size", "big"]) == 2

    # the hook the checks above rely on does catch a failing script
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace("</body>", "<script>throw new Error('boom-42')</script></body>"))
    res = _chromium(broken.resolve().as_uri(), tmp_path, "--dump-dom")
    dom = res.stdout
    assert any("boom-42" in ln for ln in _console_errors(res.stderr))
    assert re.search(r"<html[^>]*data-js-errors=\"1\"", dom) and re.search(r'<div id="js-errors"><div>[^<]*boom-42', dom)
