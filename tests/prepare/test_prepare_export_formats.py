"""System turns in LLaVA exports (read the way LLaVA's train.py reads roles) and the hf-datasets export."""

import json

import pytest

from presel.cli import main
from presel.errors import PreselError
from presel.handoff import export_training_set
from presel.io.export import to_llava_record


def llava_preprocess_roles(records):
    """The role handling of haotian-liu/LLaVA llava/train/train.py (preprocess): roles looked up in
    {"human", "gpt"}, a non-human first turn skipped, then turns must alternate human/gpt."""
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    convs = []
    for rec in records:
        source = rec["conversations"]
        if roles[source[0]["from"]] != "USER":  # KeyError on "system", as in train.py
            source = source[1:]
        msgs = []
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            assert role == ("USER", "ASSISTANT")[j % 2]
            msgs.append((role, sentence["value"]))
        convs.append(msgs)
    return convs


@pytest.fixture
def with_system(tmp_path):
    root = tmp_path / "img"
    (root / "a").mkdir(parents=True)
    for n in ("1.jpg", "2.jpg"):
        from PIL import Image

        Image.new("RGB", (8, 6), (200, 10, 10)).save(root / "a" / n)
    recs = [
        {"id": "1", "image": "a/1.jpg", "task": "vqa", "conversations": [
            {"from": "system", "value": "You are a careful annotator."},
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "2", "image": "a/2.jpg", "task": "caption", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe it."},
            {"role": "assistant", "content": "A red square."}]},
        {"id": "3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(recs))
    return path, root, recs


def test_system_turns_fail_llava_unless_merged(with_system, tmp_path):
    path, root, recs = with_system
    with pytest.raises(KeyError, match="system"):  # what the raw records do to LLaVA's train.py
        llava_preprocess_roles([recs[0]])
    out = tmp_path / "llava"
    assert main(["prepare", "export", "--train", str(path), "--image-root", str(root), "--to", "llava",
                 "--out", str(out)]) == 0
    got = json.loads((out / "train.json").read_text())
    convs = llava_preprocess_roles(got)  # loads without KeyError or role assertion
    assert convs[0][0] == ("USER", "<image>\nYou are a careful annotator.\n\nWhat colour?")
    assert convs[1][0] == ("USER", "<image>\nBe brief.\n\nDescribe it.") and convs[1][1] == ("ASSISTANT", "A red square.")
    assert convs[2] == [("USER", "Hi"), ("ASSISTANT", "Hello")]
    assert json.loads((out / "handoff.json").read_text())["system_turns"] == "merge"
    out2 = tmp_path / "llava-drop"
    export_training_set(path, root, out2, to="llava", system_turns="drop")
    got2 = json.loads((out2 / "train.json").read_text())
    assert llava_preprocess_roles(got2)[0][0] == ("USER", "<image>\nWhat colour?")
    # ShareGPT (LLaMA-Factory) keeps the system role, which it reads
    lf = tmp_path / "lf"
    export_training_set(path, root, lf, to="llama-factory")
    assert json.loads((lf / "presel_train.json").read_text())[0]["messages"][0] == {
        "role": "system", "content": "You are a careful annotator."}
    with pytest.raises(PreselError, match="system_turns='keep' must be one of merge, drop"):
        to_llava_record(recs[0], system="keep")


def test_hf_datasets_export_loads_with_embedded_images(with_system, tmp_path):
    datasets = pytest.importorskip("datasets")
    path, root, recs = with_system
    out = tmp_path / "hf"
    assert main(["prepare", "export", "--train", str(path), "--image-root", str(root), "--to", "hf-datasets",
                 "--out", str(out)]) == 0
    for p in (root / "a").iterdir():
        p.unlink()  # the dataset holds the image bytes, not paths to them
    ds = datasets.load_from_disk(str(out / "presel_train"))
    assert ds.column_names == ["id", "images", "messages", "task"] and len(ds) == 3
    assert isinstance(ds.features["images"][0] if isinstance(ds.features["images"], list)
                      else ds.features["images"].feature, datasets.Image)
    r0 = ds[0]
    assert r0["id"] == "1" and r0["images"][0].size == (8, 6) and r0["images"][0].getpixel((0, 0))[0] > 150
    assert r0["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "You are a careful annotator."}]}
    assert r0["messages"][1]["content"] == [{"type": "image", "text": None}, {"type": "text", "text": "What colour?"}]
    assert ds[1]["messages"][1]["content"][0]["type"] == "image"  # token added where the record had none
    assert ds[2]["images"] == [] and ds[2]["messages"][0]["content"] == [{"type": "text", "text": "Hi"}]
    info = json.loads((out / "handoff.json").read_text())
    assert info["format"] == "hf-datasets" and info["records"] == 3 and not (out / "images").exists()
