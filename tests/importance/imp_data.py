"""Synthetic annotated reference sets for the importance tests."""

import json
from pathlib import Path

COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20), (200, 40, 210), (20, 210, 220)]
NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]


def make_image(path: Path, i: int) -> None:
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (48 + i % 5, 40), COLORS[i % len(COLORS)])
    ImageDraw.Draw(img).rectangle([4 + i % 7, 6, 20 + i % 9, 30], fill=(255, 255, 255))
    img.save(path)


def make_annotated(root: Path, *, n: int = 8, tasks=("colour", "shape"), bad: bool = True) -> Path:
    """``n`` images, records cycling over ``tasks``, some multi-turn; with ``bad``: a missing image, a corrupt
    image, an empty conversation, a record without a reply and one with an empty reply."""
    root.mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        make_image(root / "img" / f"c{i}.png", i)
        conv = [{"from": "human", "value": "<image>\nWhat colour is the background?"},
                {"from": "gpt", "value": f"It is {NAMES[i % len(NAMES)]}."}]
        if i % 3 == 2:
            conv += [{"from": "human", "value": "Is there a white box?"}, {"from": "gpt", "value": "Yes, one."}]
        recs.append({"id": f"c{i}", "image": f"img/c{i}.png", "task": tasks[i % len(tasks)], "conversations": conv})
    if bad:
        (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        q = [{"from": "human", "value": "<image>\nWhat colour?"}]
        a = [{"from": "gpt", "value": "Red."}]
        t = tasks[0]
        recs.append({"id": "missing", "image": "img/nope.png", "task": t, "conversations": q + a})
        recs.append({"id": "broken", "image": "img/broken.jpg", "task": t, "conversations": q + a})
        recs.append({"id": "empty", "image": "img/c0.png", "task": t, "conversations": []})
        recs.append({"id": "question-only", "image": "img/c1.png", "task": t, "conversations": q})
        recs.append({"id": "blank-reply", "image": "img/c2.png", "task": t,
                     "conversations": q + [{"from": "gpt", "value": "  "}]})
    path = root / "ref_annotated.json"
    path.write_text(json.dumps(recs, indent=1))
    return path


def make_pool(root: Path, sizes: dict[str, int], shared: int = 0) -> Path:
    """A pool JSONL with ``sizes[task]`` distinct images per task; the first ``shared`` images of the first
    task also appear (as other records) in the second task."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    k = 0
    names = list(sizes)
    firsts = []
    for t in names:
        for j in range(sizes[t]):
            rows.append({"id": f"{t}-{j}", "image": f"img/{t}/{j}.png", "task": t})
            if t == names[0] and j < shared:
                firsts.append(f"img/{t}/{j}.png")
            k += 1
    for j, img in enumerate(firsts):
        rows.append({"id": f"{names[1]}-shared{j}", "image": img, "task": names[1]})
    path = root / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
