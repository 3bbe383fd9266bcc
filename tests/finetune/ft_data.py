"""Synthetic training data for the finetune tests."""

import json
from pathlib import Path

COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20), (200, 40, 210), (20, 210, 220)]
NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]


def make_train_set(root: Path, *, n: int = 6, bad: bool = True) -> Path:
    """``n`` small solid-colour images (with a shape) and a LLaVA JSON of short conversations about them;
    with ``bad``: one record with a missing image, one with a corrupt image, one without an assistant turn."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    recs = []
    for i in range(n):
        img = Image.new("RGB", (48, 40), COLORS[i % len(COLORS)])
        ImageDraw.Draw(img).rectangle([4 + i, 6, 20 + 2 * i, 30], fill=(255, 255, 255))
        img.save(root / "img" / f"c{i}.png")
        conv = [{"from": "human", "value": "<image>\nWhat colour is the background?"},
                {"from": "gpt", "value": f"It is {NAMES[i % len(NAMES)]}."}]
        if i % 3 == 2:  # some multi-turn conversations
            conv += [{"from": "human", "value": "Is there a white box?"}, {"from": "gpt", "value": "Yes, one."}]
        recs.append({"id": f"c{i}", "image": f"img/c{i}.png", "conversations": conv})
    if bad:
        (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        q = [{"from": "human", "value": "<image>\nWhat colour?"}]
        recs.append({"id": "missing", "image": "img/nope.png", "conversations": q + [{"from": "gpt", "value": "Red."}]})
        recs.append({"id": "broken", "image": "img/broken.jpg", "conversations": q + [{"from": "gpt", "value": "Red."}]})
        recs.append({"id": "question-only", "image": "img/c0.png", "conversations": q})
    path = root / "train.json"
    path.write_text(json.dumps(recs, indent=1))
    return path
