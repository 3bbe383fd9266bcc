"""The HTML report: built from a synthetic run directory, self-contained, tolerant, and rendered by Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from presel.report.html import SECTIONS, build_report
from presel.report.plots import pca_2d

TASKS = {"alpha": 60, "beta": 40, "gamma": 25}
SECTION_IDS = [s for s, _ in SECTIONS]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_run(root: Path) -> dict:
    """A complete synthetic run directory in the layout the pipeline writes; returns what it holds."""
    rng = np.random.default_rng(0)
    pool_dir = root / "pool"
    records, feats, truth = [], {}, {}
    base = {"alpha": (200, 60, 60), "beta": (60, 160, 80), "gamma": (60, 90, 210)}
    for task, n in TASKS.items():
        centers = rng.normal(size=(3, 16))
        for i in range(n):
            rid = f"{task}-{i:03d}"
            img = f"images/{task}/{rid}.png"
            p = pool_dir / img
            p.parent.mkdir(parents=True, exist_ok=True)
            arr = np.clip(np.asarray(base[task]) + rng.normal(0, 40, size=(24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(p)
            c = i % 3
            v = centers[c] + 0.35 * rng.normal(size=16)
            feats[img] = v / np.linalg.norm(v)
            truth[rid] = (task, c)
            records.append({"id": rid, "image": img, "task": task,
                            "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                              {"from": "gpt", "value": task}]})
    # one broken image: rejected by feature extraction, so it has no vector and no assignment
    bad = {"id": "gamma-bad", "image": "images/gamma/bad.png", "task": "gamma", "conversations": records[-1]["conversations"]}
    (pool_dir / bad["image"]).write_bytes(b"not a png")
    records.append(bad)
    _write_jsonl(pool_dir / "pool.jsonl", records)
    # feature store, written with the store's own API
    from presel.features.store import FORMAT, VERSION, FeatureStore

    keys = sorted(feats)
    store = FeatureStore.open(root / "features", {"model": "synthetic", "store_dtype": "float32"})
    store.write_shard(0, keys, [f"h{i}" for i in range(len(keys))], np.stack([feats[k] for k in keys]), [])
    store.write_index([(k, f"h{i}", 0, i) for i, k in enumerate(keys)])
    _write_json(root / "features" / "manifest.json", {"format": FORMAT, "version": VERSION, "dim": 16,
                                                      "dtype": "float32", "shards": [{"index": 0, "rows": len(keys)}]})
    _write_jsonl(root / "features" / "rejects.jsonl", [{"id": bad["id"], "image": bad["image"],
                                                          "reason": "cannot decode image: not a PNG"}])
    # reference set: 2 per task
    ref_ids = {t: [f"{t}-{i:03d}" for i in (0, 1)] for t in TASKS}
    ref_rows = [{"id": i, "image": f"images/{t}/{i}.png", "task": t} for t, ids in ref_ids.items() for i in ids]
    _write_jsonl(root / "reference" / "reference.jsonl", ref_rows)
    # IRS on the reference set; alpha's question matters most
    irs_mean = {"alpha": 0.55, "beta": 0.8, "gamma": 0.95}
    rows = {"id": [], "task": [], "loss_q": [], "loss_noq": [], "irs": [], "n_response_tokens": []}
    for t, ids in ref_ids.items():
        for k, i in enumerate(ids):
            noq = 2.0 + k
            irs = irs_mean[t] + (0.05 if k else -0.05)
            for col, v in zip(rows, (i, t, irs * noq, noq, irs, 3), strict=True):
                rows[col].append(v)
    (root / "irs").mkdir()
    pq.write_table(pa.table(rows), root / "irs" / "irs.parquet")
    _write_jsonl(root / "irs" / "rejected.jsonl", [{"id": "beta-007", "reason": "no response tokens"}])
    tau = 1 / math.sqrt(len(TASKS))
    z = {t: math.exp(-s / tau) for t, s in irs_mean.items()}
    weights = {t: {"score": irs_mean[t], "weight": z[t] / sum(z.values()), "n": 2} for t in TASKS}
    _write_json(root / "task_weights.json", weights)
    # selection: clusters, neighbour centrality, the most central per cluster
    asg = {"id": [], "task": [], "cluster": [], "nc_score": [], "selected": [], "reference": []}
    sel = {"id": [], "image": [], "task": [], "cluster": [], "nc_score": [], "rank": [], "source": []}
    quota = {"alpha": 9, "beta": 5, "gamma": 2}
    summary = {"tasks": {}, "totals": {}}
    for t, n in TASKS.items():
        ids = [f"{t}-{i:03d}" for i in range(n)]
        scores = {}
        for c in range(3):
            members = [i for i in ids if truth[i][1] == c and i not in ref_ids[t]]
            x = np.stack([feats[f"images/{t}/{i}.png"] for i in members])
            sim = x @ x.T
            np.fill_diagonal(sim, -np.inf)
            top = np.sort(sim, axis=1)[:, ::-1][:, :5]
            scores.update(zip(members, top.mean(axis=1).tolist(), strict=True))
        chosen = set(sorted(scores, key=lambda i: -scores[i])[:quota[t]])
        for i in ids:
            is_ref = i in ref_ids[t]
            for col, v in zip(asg, (i, t, truth[i][1], None if is_ref else scores[i], i in chosen, is_ref), strict=True):
                asg[col].append(v)
            if is_ref or i in chosen:
                for col, v in zip(sel, (i, f"images/{t}/{i}.png", t, truth[i][1], None if is_ref else scores[i],
                                        len(sel["id"]), "reference" if is_ref else "selected"), strict=True):
                    sel[col].append(v)
        summary["tasks"][t] = {"pool": n + (t == "gamma"), "reference": 2, "clusters": 3, "weight": weights[t]["weight"],
                               "quota": quota[t], "selected": quota[t]}
    summary["totals"] = {"pool": 126, "reference": 6, "selected": 16, "budget": 22}
    (root / "selection").mkdir()
    pq.write_table(pa.table(asg), root / "selection" / "assignments.parquet")
    pq.write_table(pa.table(sel), root / "selection" / "selection.parquet")
    _write_json(root / "selection" / "summary.json", summary)
    # fine-tuning logs, generation, timings, evaluation
    for d in ("ref_model", "final_models/presel", "final_models/random"):
        steps = np.arange(1, 61)
        loss = 3.0 * np.exp(-steps / 25) + 0.4 + 0.05 * rng.normal(size=60)
        _write_jsonl(root / d / "train_log.jsonl", [{"step": int(s), "epoch": float(s / 60), "loss": float(v), "lr": 2e-4}
                                                    for s, v in zip(steps, loss, strict=True)])
    _write_json(root / "generate" / "summary.json", {"requested": 22, "generated": 22, "failed": 0, "mode": "oracle"})
    _write_json(root / "timings.json", {"reference": 0.4, "ref_model": 95.2, "score": 30.1, "weights": 0.1,
                                        "embed": 61.0, "select": 2.3, "generate": 0.2, "final_model": 140.0})
    _write_json(root / "evaluation.json", {
        n: {"per_task": {t: {"n": 10, "accuracy": a * (0.8 + 0.1 * k)} for k, t in enumerate(TASKS)},
            "mean_accuracy": a} for n, a in (("presel", 0.6), ("random", 0.5), ("full", 0.65))})
    return {"quota": quota, "ref": ref_ids, "selected": sum(quota.values())}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    make_run(root)
    return root


@pytest.fixture(scope="module")
def report(run) -> tuple[Path, str]:
    path = build_report(run)
    return path, path.read_text(encoding="utf-8")


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


def test_every_section_renders_from_a_full_run(run, report):
    path, text = report
    assert path == run / "report.html"
    p = _parse(text)
    assert list(p.sections) == SECTION_IDS
    assert {s: st for s, st in p.sections.items() if st != "ok"} == {}
    assert "Not run" not in text
    # the task table carries the numbers of the run
    table = re.search(r'<section id="tasks".*?</section>', text, re.S).group(0)
    cells = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    alpha = next(c for c in cells if ">alpha<" in c)
    nums = re.findall(r'<td class="num">(.*?)</td>', alpha)
    assert nums[:3] == ["60", "60", "2"] and nums[-3:] == ["3", "9", "9"]
    assert "0.550" in alpha  # IRS score
    # galleries: most and least central per task, selected ones marked
    gallery = re.search(r'<section id="gallery".*?</section>', text, re.S).group(0)
    assert len(re.findall(r"<figure", gallery)) == 3 * 2 * 8
    assert 'class="sel"' in gallery and "image<br>missing" not in gallery
    # rejects name the broken image and the IRS reject
    rejects = re.search(r'<section id="rejects".*?</section>', text, re.S).group(0)
    assert "images/gamma/bad.png" in rejects and "no response tokens" in rejects
    # relative score of the evaluation table (presel vs full)
    assert "relative to full" in text


def test_report_is_self_contained(report):
    _, text = report
    p = _parse(text)
    assert p.imgs == 7 + 48  # 7 plots, 48 thumbnails
    bad = [(t, k, u[:60]) for t, k, u in p.urls if not (u.startswith("data:") or u.startswith("#"))]
    assert bad == []
    assert all("src" not in s for s in p.scripts)
    assert not re.search(r"https?://", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text


def test_missing_inputs_give_not_run_notes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _parse(build_report(empty).read_text(encoding="utf-8"))
    assert list(p.sections) == SECTION_IDS and set(p.sections.values()) == {"not-run"}
    # only a pool and timings: those sections render, the rest say what they need
    part = tmp_path / "part"
    full = tmp_path / "full"
    make_run(full)
    shutil.copytree(full / "pool", part / "pool")
    shutil.copy(full / "timings.json", part / "timings.json")
    text = build_report(part, tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    st = _parse(text).sections
    assert {s for s, v in st.items() if v == "ok"} == {"overview", "tasks", "timings"}
    assert "Not run: needs selection/assignments.parquet" in text
    # a damaged input is reported, not fatal; columns missing from a table are tolerated
    (full / "irs" / "irs.parquet").write_bytes(b"garbage")
    pq.write_table(pa.table({"id": ["alpha-005"], "task": ["alpha"]}), full / "selection" / "assignments.parquet")
    text = build_report(full).read_text(encoding="utf-8")
    st = _parse(text).sections
    assert st["irs"] == "not-run" and st["clusters"] == "not-run" and st["tasks"] == "ok"
    assert "irs/irs.parquet: could not read" in text
    assert st["training"] == "ok" and st["evaluation"] == "ok"
    # weights as plain numbers; a value of the wrong type breaks one section, not the report
    _write_json(full / "task_weights.json", {"alpha": 0.5, "beta": 0.3, "gamma": 0.2})
    _write_jsonl(full / "ref_model" / "train_log.jsonl", [{"step": "one", "loss": 1.0}])
    text = build_report(full).read_text(encoding="utf-8")
    st = _parse(text).sections
    assert st["training"] == "error" and "ValueError" in text and st["timings"] == "ok"
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", text, re.S) if ">beta<" in r)
    assert "0.300" in row


def test_pool_outside_the_run_dir_and_image_root(tmp_path, run):
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("report.html"))
    shutil.move(str(moved / "pool"), str(tmp_path / "elsewhere"))
    st = _parse(build_report(moved).read_text()).sections
    assert st["gallery"] == "not-run" and st["tasks"] == "ok"  # sizes still come from selection/summary.json
    st = _parse(build_report(moved, pool=tmp_path / "elsewhere" / "pool.jsonl").read_text()).sections
    assert st["gallery"] == "ok" and st["maps"] == "ok"
    # the pool a stage recorded in its config.json is found without --pool
    _write_json(moved / "selection" / "config.json", {"stage": "select", "inputs": {"pool": str(tmp_path / "elsewhere" / "pool.jsonl")}})
    text = build_report(moved).read_text()
    assert _parse(text).sections["gallery"] == "ok" and "image<br>missing" not in text
    (moved / "selection" / "config.json").unlink()
    # the run's config.yaml (presel run / presel demo) names the pool, relative to itself, with its task settings
    (moved / "config.yaml").write_text("out: .\npool:\n  path: ../elsewhere/pool.jsonl\n  task-rules: {'images/': everything}\n")
    text = build_report(moved).read_text()
    row = next(r for r in re.findall(r"<tr>(.*?)</tr>", text, re.S) if ">everything<" in r)
    assert re.findall(r'<td class="num">(.*?)</td>', row)[:2] == ["126", "126"]
    (moved / "config.yaml").unlink()
    # image_root.txt points at the image folder
    shutil.copytree(tmp_path / "elsewhere", moved / "pool2")
    (moved / "pool").mkdir()
    shutil.copy(moved / "pool2" / "pool.jsonl", moved / "pool" / "pool.jsonl")
    (moved / "pool" / "image_root.txt").write_text("../pool2\n")
    text = build_report(moved).read_text()
    assert "image<br>missing" not in text and _parse(text).sections["gallery"] == "ok"


def test_cli(tmp_path, run):
    from presel.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--title", "demo run"]) == 0
    assert "presel report <span>· demo run</span>" in out.read_text()
    assert main(["report", str(tmp_path / "nope")]) == 2


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
    assert root["data-sections"] == root["data-sections-ok"] == str(len(SECTIONS))
    assert root["data-broken-images"] == "0" and root["data-images"] == "55"
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


def test_many_tasks_are_capped_and_summary_variants_read(tmp_path):
    from presel.report.html import MAX_TASK_PANELS

    run = tmp_path / "many"
    n_tasks = MAX_TASK_PANELS + 6
    cols = {"id": [], "task": [], "cluster": [], "nc_score": [], "selected": [], "reference": []}
    for t in range(n_tasks):
        for i in range(4 + t):
            for c, v in zip(cols, (f"t{t:02d}-{i}", f"t{t:02d}", i % 2, 0.5 + i / 100, i == 0, False), strict=True):
                cols[c].append(v)
    (run / "selection").mkdir(parents=True)
    pq.write_table(pa.table(cols), run / "selection" / "assignments.parquet")
    # a summary with per-task rows as a list and other field names
    _write_json(run / "selection" / "summary.json", {"per_task": [{"task": f"t{t:02d}", "pool_size": 4 + t, "n_selected": 1}
                                                                  for t in range(n_tasks)]})
    text = build_report(run).read_text()
    st = _parse(text).sections
    assert st["centrality"] == "ok" and st["clusters"] == "ok" and st["tasks"] == "ok"
    assert f"Showing the {MAX_TASK_PANELS} largest of {n_tasks} tasks." in text
    table = re.search(r'<section id="tasks".*?</section>', text, re.S).group(0)
    assert table.count("<tr>") == n_tasks + 1 + 1  # header, tasks, total
    assert re.search(r">t29<.*?<td class=\"num\">33</td>", table, re.S)
