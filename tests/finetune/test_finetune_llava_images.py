"""Images under chat format ``llava-v1`` (what ``protocol: official`` uses): opened as LLaVA opens them
(``Image.open(...).convert("RGB")``: alpha dropped, not composited) and, for fine-tuning, padded to a square with the
processor's mean colour (LLaVA-1.5's ``image_aspect_ratio pad``, as the authors train); scoring keeps the processor's
resize and crop (their ``square``). Other chat formats keep presel's image handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tiny_llava):
    from presel.vlm.load import load_vlm

    return load_vlm(tiny_llava, dtype="fp32", device="cpu")[1]


@pytest.fixture
def rgba_png(tmp_path):
    from PIL import Image

    a = np.zeros((20, 40, 4), dtype=np.uint8)
    a[..., 0] = 200  # red where transparent: convert("RGB") keeps it, compositing on white would not
    a[:, :20, 3] = 0
    a[:, 20:, 3] = 255
    p = tmp_path / "img.png"
    Image.fromarray(a, mode="RGBA").save(p)
    return p


def test_expand2square_centres_on_the_mean_colour():
    from PIL import Image

    from presel.vlm.render import expand2square

    img = Image.new("RGB", (40, 20), (10, 20, 30))
    sq = np.asarray(expand2square(img, (1, 2, 3)))
    assert sq.shape == (40, 40, 3)
    assert (sq[:10] == (1, 2, 3)).all() and (sq[30:] == (1, 2, 3)).all() and (sq[10:30] == (10, 20, 30)).all()
    tall = np.asarray(expand2square(Image.new("RGB", (20, 40), (9, 9, 9)), (0, 0, 0)))
    assert (tall[:, :10] == 0).all() and (tall[:, 10:30] == 9).all()


def test_llava_v1_opens_as_llava_and_others_composite(tiny, rgba_png):
    from PIL import Image

    from presel.vlm.render import load_image_for, training_image, with_chat_format

    llava = with_chat_format(tiny, "llava-v1")
    got = np.asarray(load_image_for(llava, str(rgba_png)))
    want = np.asarray(Image.open(rgba_png).convert("RGB"))
    assert (got == want).all() and (got[:, :20] == (200, 0, 0)).all()
    mine = np.asarray(load_image_for(tiny, str(rgba_png)))
    assert (mine[:, :20] == 255).all()  # presel's default: transparent pixels composited on white
    padded = training_image(llava, Image.fromarray(got))
    mean = tuple(int(x * 255) for x in tiny.image_processor.image_mean)
    assert padded.size == (40, 40) and np.asarray(padded)[0, 0].tolist() == list(mean)
    assert training_image(tiny, Image.fromarray(got)).size == (40, 20)  # no padding outside llava-v1


def test_training_dataset_pads_under_llava_v1(tiny, rgba_png, tmp_path):
    from PIL import Image

    from presel.finetune.data import ConversationDataset, load_train_data
    from presel.vlm.render import expand2square, with_chat_format

    rec = {"id": "a", "image": rgba_png.name, "task": "t",
           "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}
    (tmp_path / "train.json").write_text(json.dumps([rec]))
    data = load_train_data(tmp_path / "train.json", image_root=tmp_path)
    llava = with_chat_format(tiny, "llava-v1")
    enc = ConversationDataset(data, llava)[(0, False)]
    mean = tuple(int(x * 255) for x in tiny.image_processor.image_mean)
    want = tiny.image_processor(expand2square(Image.open(rgba_png).convert("RGB"), mean), return_tensors="pt")
    assert torch.equal(enc.extras["pixel_values"], want["pixel_values"])
    plain = ConversationDataset(data, tiny)[(0, False)]
    assert not torch.equal(plain.extras["pixel_values"], want["pixel_values"])
