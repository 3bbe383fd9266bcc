"""Synthetic stand-ins for ``llava_v1_5_mix665k.json`` and ``annotation_191-task_1k.json``.

The values are invented; the record *shapes* copy the released files (the dataset cards of
``liuhaotian/LLaVA-Instruct-150K`` and ``Vision-Flan/vision-flan_191-task_1k``, LLaVA-1.5's Table 7 prompts and
haotian-liu/LLaVA issue #702):
12-digit COCO id strings, GQA integer ids, OCR-VQA book ids (some ending in ``X``), text-only ShareGPT
records with ``"model": ""``, image paths per folder, ``<image>`` as prefix or suffix of the first human
turn, formatting suffixes on the first turn only, multi-turn VQA records, A-OKVQA option lines (each
question repeated once per choice), region prompts with ``[x1, y1, x2, y2]`` boxes, single-turn detail /
complex LLaVA records. Every record's true source is known, so tests can check that the rules recover
the counts exactly. Deterministic for a seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from presel.prepare.rules import (
    CAPTION_PROMPT,
    DETAIL_PROMPTS,
    MC_SUFFIX,
    REGION_BBOX,
    REGION_DESCRIBE,
    VQA_SUFFIX,
)

# true source names of the generator (finer than the rules: VQAv2 and OKVQA are separate here)
FAKE_SOURCES = ("llava_conversation", "llava_detail", "llava_complex", "sharegpt", "vqav2", "okvqa", "gqa",
                "ocrvqa", "aokvqa", "textcaps", "refcoco", "vg")
# rule source each true source must come out as
RULE_SOURCE = {s: s for s in FAKE_SOURCES} | {"vqav2": "vqav2_okvqa", "okvqa": "vqav2_okvqa"}

# about 1/200 of the real per-source counts (#702); LLaVA-158K split 36/15/49 (an assumption)
DEFAULT_COUNTS = {"llava_conversation": 284, "llava_detail": 116, "llava_complex": 388, "sharegpt": 203,
                  "vqav2": 414, "okvqa": 45, "gqa": 361, "ocrvqa": 400, "aokvqa": 331, "textcaps": 110,
                  "refcoco": 242, "vg": 432}

_OBJECTS = ("dog", "cat", "bus", "man", "woman", "kite", "pizza", "clock", "train", "horse", "umbrella", "boat")
_COLORS = ("red", "blue", "green", "white", "black", "yellow")
_FREE_Q = ("What is the {o} doing in the image?", "What color is the {o}?", "Where is the {o} located?",
           "How many people are near the {o}?", "Is the {o} on the left or right side?",
           "What might be the purpose of the {o} in this setting?")
_COMPLEX_Q = ("What challenges might the {o} face in this situation?", "Why might the {o} be placed here?",
              "What can be inferred about the weather from the {o}?",
              "What safety concerns could arise from the position of the {o}?")
_SHORT_Q = ("What color is the {o}?", "How many {o}s are there?", "Is there a {o}?", "What is the {o} on?",
            "What sport is being played?", "What room is this?")
_GQA_Q = ("Is the {o} to the left or to the right of the table?", "What is the {o} in front of?",
          "Which color is the {o}?", "Are there both {o}s and fences in the picture?")
_OCR_Q = ("Who wrote this book?", "What is the title of this book?", "What type of book is this?",
          "Is this a comedy book?", "Is this a sci-fi book?", "Who is the author of this book?")
_SHAREGPT_Q = ("Write a haiku about autumn.", "How do I reverse a list in Python?",
               "Explain the difference between TCP and UDP.", "Summarise the plot of Hamlet.")


class _Gen:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.coco_ids = [f"{int(x):012d}" for x in self.rng.choice(581_929, size=1500, replace=False)]

    def pick(self, seq: Any) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def obj(self) -> str:
        return self.pick(_OBJECTS)

    def with_image(self, text: str) -> str:
        return f"<image>\n{text}" if self.rng.random() < 0.6 else f"{text}\n<image>"

    def box(self) -> str:
        a, b = sorted(self.rng.random(2)), sorted(self.rng.random(2))
        return f"[{a[0]:.2f}, {b[0]:.2f}, {a[1]:.2f}, {b[1]:.2f}]"

    def turns(self, pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
        out = []
        for q, a in pairs:
            out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        return out

    def coco(self) -> tuple[str, str]:
        cid = self.pick(self.coco_ids)
        return cid, f"coco/train2017/{cid}.jpg"

    def record(self, source: str) -> dict[str, Any]:
        o, r = self.obj(), self.rng
        if source == "llava_conversation":
            cid, img = self.coco()
            n = int(r.integers(2, 6))
            pairs = [(self.pick(_FREE_Q).format(o=self.obj()), f"The {o} is {self.pick(_COLORS)} and near a table.")
                     for _ in range(n)]
            pairs[0] = (self.with_image(pairs[0][0]), pairs[0][1])
            return {"id": cid, "image": img, "conversations": self.turns(pairs)}
        if source == "llava_detail":
            cid, img = self.coco()
            q = self.with_image(self.pick(DETAIL_PROMPTS))
            return {"id": cid, "image": img, "conversations": self.turns(
                [(q, f"The image shows a {self.pick(_COLORS)} {o} in a busy street.\n\nThere are several people nearby.")])}
        if source == "llava_complex":
            cid, img = self.coco()
            q = self.with_image(self.pick(_COMPLEX_Q).format(o=o))
            return {"id": cid, "image": img, "conversations": self.turns(
                [(q, f"The {o} might face difficulties because the area is crowded, which may also ...")])}
        if source == "sharegpt":
            letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            sid = "".join(self.pick(letters) for _ in range(7)) + f"_{int(r.integers(0, 4))}"
            n = int(r.integers(1, 4))
            return {"id": sid, "model": "", "conversations": self.turns(
                [(self.pick(_SHAREGPT_Q), "Here is an answer with some detail.") for _ in range(n)])}
        if source in ("vqav2", "okvqa"):
            cid, img = self.coco()
            n = int(r.integers(3, 7)) if source == "vqav2" else 1
            pairs = [(self.pick(_SHORT_Q).format(o=self.obj()), self.pick(_COLORS)) for _ in range(n)]
            pairs[0] = (self.with_image(f"{pairs[0][0]}\n{VQA_SUFFIX}"), pairs[0][1])
            return {"id": cid, "image": img, "conversations": self.turns(pairs)}
        if source == "gqa":
            gid = int(r.integers(1_000_000, 2_420_000))
            n = int(r.integers(1, 8))
            pairs = [(self.pick(_GQA_Q).format(o=self.obj()), self.pick(("Yes", "No", "left", "right", "table")))
                     for _ in range(n)]
            pairs[0] = (self.with_image(f"{pairs[0][0]}\n{VQA_SUFFIX}"), pairs[0][1])
            return {"id": gid, "image": f"gqa/images/{gid}.jpg", "conversations": self.turns(pairs)}
        if source == "ocrvqa":
            digits = "".join(str(int(d)) for d in r.integers(0, 10, size=9))
            bid = digits + ("X" if r.random() < 0.2 else str(int(r.integers(0, 10))))
            n = int(r.integers(2, 6))
            pairs = [(self.pick(_OCR_Q), self.pick(("Jane Doe", "Yes", "No", "Cookbooks, Food & Wine")))
                     for _ in range(n)]
            pairs[0] = (self.with_image(f"{pairs[0][0]}\n{VQA_SUFFIX}"), pairs[0][1])
            return {"id": bid, "image": f"ocr_vqa/images/{bid}.jpg", "conversations": self.turns(pairs)}
        if source == "aokvqa":
            cid, img = self.coco()
            opts = [self.obj() for _ in range(4)]
            letter = self.pick("ABCD")
            lines = "\n".join(f"{L}. {t}" for L, t in zip("ABCD", opts))
            q = self.with_image(f"What is the {o} most likely used for?\n{lines}\n{MC_SUFFIX}")
            return {"id": cid, "image": img, "conversations": self.turns([(q, letter)])}
        if source == "textcaps":
            hid = "".join(self.pick("0123456789abcdef") for _ in range(16))
            return {"id": hid, "image": f"textvqa/train_images/{hid}.jpg", "conversations": self.turns(
                [(self.with_image(CAPTION_PROMPT), f"A {self.pick(_COLORS)} sign that says open.")])}
        if source in ("refcoco", "vg"):
            if source == "refcoco":
                rid, img = self.coco()
            else:
                num = int(r.integers(1, 2_417_000))
                rid, img = str(num), f"vg/{self.pick(('VG_100K', 'VG_100K_2'))}/{num}.jpg"
            n = int(r.integers(1, 5)) if source == "refcoco" else 10
            pairs = []
            for _ in range(n):
                if r.random() < 0.5:
                    pairs.append((f"{REGION_DESCRIBE} {self.box()}.", f"{self.pick(_COLORS)} {self.obj()} on the left"))
                else:
                    pairs.append((f"{REGION_BBOX} {self.pick(_COLORS)} {self.obj()}.", self.box()))
            pairs[0] = (self.with_image(pairs[0][0]), pairs[0][1])
            return {"id": rid, "image": img, "conversations": self.turns(pairs)}
        raise ValueError(f"unknown fake source {source!r}")


def make_fake_665k(path: str | os.PathLike, counts: dict[str, int] | None = None, *, seed: int = 0) -> list[str]:
    """Write a shuffled LLaVA-665K-shaped JSON list to ``path``; return the true source of each record.

    ``counts`` maps :data:`FAKE_SOURCES` names to record counts (default :data:`DEFAULT_COUNTS`, about 3.3K
    records). A-OKVQA questions are repeated with the options in a new order, as the mix does.
    """
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = sorted(set(counts) - set(FAKE_SOURCES))
    if unknown:
        raise ValueError(f"unknown fake sources {unknown}; known: {FAKE_SOURCES}")
    g = _Gen(seed)
    items: list[tuple[str, dict[str, Any]]] = []
    for source in FAKE_SOURCES:
        n = counts.get(source, 0)
        while n > 0:
            rec = g.record(source)
            if source == "aokvqa":  # the same question once per choice, options reordered
                k = min(n, 4)
                human = rec["conversations"][0]["value"]
                for _ in range(k):
                    items.append((source, {"id": rec["id"], "image": rec["image"],
                                           "conversations": [{"from": "human", "value": human},
                                                             dict(rec["conversations"][1])]}))
                n -= k
                continue
            items.append((source, rec))
            n -= 1
    order = g.rng.permutation(len(items))
    items = [items[i] for i in order]
    with open(path, "w", encoding="utf-8") as f:
        json.dump([rec for _, rec in items], f, ensure_ascii=False, indent=1)
    return [s for s, _ in items]


# ------------------------------------------------------------------------------------------- Vision-FLAN

FAKE_VF_TASKS = ("INATURALIST+class_classification", "VQA-E+visual_question_answering", "DTD+all_texture_detection",
                 "PACS+guitar_image_category_classification", "MEMOTION+sentiment_detection", "VQA_counting",
                 "ITM", "image_text_selection", "ok_vqa", "GQA", "VQAv2", "visualgenome_vqa")


def make_fake_vision_flan(path: str | os.PathLike, n_tasks: int = 12, per_task: int = 60, *,
                          seed: int = 0, empty_answers: int = 1) -> dict[str, Any]:
    """Write a Vision-FLAN-shaped JSON list (keys id, image, task_name, conversations; 2 turns each).

    Task sizes vary (``per_task`` minus up to a third), some ``id`` values repeat inside a task, some
    images are shared, ``empty_answers`` records have an empty gpt turn. Returns the truth:
    ``{"tasks": {task: count}, "order": [...], "empty": [positions], "records": n}``.
    """
    rng = np.random.default_rng(seed)
    names = list(FAKE_VF_TASKS[:n_tasks]) + [f"TASK{i}+generated_task" for i in range(max(0, n_tasks - len(FAKE_VF_TASKS)))]
    recs: list[dict[str, Any]] = []
    for t in names:
        n = per_task - int(rng.integers(0, per_task // 3 + 1))
        for i in range(n):
            src = int(rng.integers(0, max(2, n // 2)))  # repeats -> ids not unique within a task
            q = f"Which category does the object in this image belong to? Options: (a) {t[:4]} (b) other {i % 3}"
            human = f"<image>\n{q}" if rng.random() < 0.42 else f"{q}\n<image>"
            img = f"{t}_{src}_img_{src:05d}.jpg"
            recs.append({"id": f"vision-flan_{t}+{src}" if "+" in t else f"multiinstruct_{t}_train_{src}",
                         "image": img, "task_name": t,
                         "conversations": [{"from": "human", "value": human},
                                           {"from": "gpt", "value": f"(a) {t[:4]}"}]})
    order = rng.permutation(len(recs))
    recs = [recs[i] for i in order]
    empty = sorted(int(i) for i in rng.choice(len(recs), size=empty_answers, replace=False))
    for i in empty:
        recs[i]["conversations"][1]["value"] = ""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(recs, f, ensure_ascii=False, indent=1)
    counts: dict[str, int] = {}
    for r in recs:
        counts[r["task_name"]] = counts.get(r["task_name"], 0) + 1
    return {"tasks": counts, "order": list(counts), "empty": empty, "records": len(recs)}


def write_split_files(folder: str | os.PathLike, annotations: str | os.PathLike, task_of_record: list[str | None],
                      *, numbering: str = "notext", with_idx: bool = True) -> dict[str, int]:
    """Write PreSel-style split files (``<task>.json``: records with ``unique_idx``) for a fake 665K file.

    ``task_of_record[p]`` is the task of record ``p`` (None for text-only records). ``numbering`` is
    ``notext`` (PreSel: positions after dropping text-only records) or ``original``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(Path(annotations).read_text(encoding="utf-8"))
    groups: dict[str, list[dict[str, Any]]] = {}
    q = 0
    for p, rec in enumerate(data):
        if "image" not in rec:
            continue
        task = task_of_record[p]
        if task is not None:
            out = dict(rec)
            if with_idx:
                out["unique_idx"] = q if numbering == "notext" else p
            groups.setdefault(task, []).append(out)
        q += 1
    for task, recs in groups.items():
        (folder / f"{task}.json").write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    return {t: len(v) for t, v in groups.items()}


def make_fake_images(annotations: str | os.PathLike, image_root: str | os.PathLike, *, size: int = 32,
                     limit: int | None = None) -> int:
    """Write a small image for every distinct ``image`` path of a (fake) annotations file under ``image_root``.

    Each image is a deterministic colour pattern derived from its path (so near-identical names still
    differ), saved in the format its extension names. ``limit`` caps how many are written (the first
    distinct paths in file order). Returns the number written; existing files are left as they are.
    """
    import hashlib

    from PIL import Image

    root = Path(image_root)
    data = json.loads(Path(annotations).read_text(encoding="utf-8"))
    paths = list(dict.fromkeys(r["image"] for r in data if isinstance(r, dict) and r.get("image")))
    if limit is not None:
        paths = paths[:limit]
    n = 0
    for rel in paths:
        dest = root / rel
        if dest.exists():
            continue
        h = hashlib.sha256(rel.encode("utf-8")).digest()
        rng = np.random.default_rng(int.from_bytes(h[:8], "little"))
        base = np.array(list(h[8:11]), dtype=np.uint8)
        img = np.clip(base + rng.integers(-40, 41, size=(size, size, 3)), 0, 255).astype(np.uint8)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(dest.suffix.lower(), "PNG")
        Image.fromarray(img).save(dest, format=fmt)
        n += 1
    return n
