"""presel prepare export: LLaVA repo (train.json + images/) and LLaMA-Factory (ShareGPT + dataset_info.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from presel.cli import main
from presel.errors import PreselError
from presel.handoff import export_training_set


@pytest.fixture
def train(tmp_path):
    root = tmp_path / "data"
    recs = [
        {"id": "10", "image": "coco/train2017/000000000010.jpg", "task": "vqav2_okvqa",
         "conversations": [{"from": "human", "value": "What is it?\nAnswer the question using a single word or phrase.\n<image>"},
                           {"from": "gpt", "value": "dog"}, {"from": "human", "value": "Color?"},
                           {"from": "gpt", "value": "brown"}]},
        {"id": "11", "image": "gqa/images/2327515.jpg", "task": "gqa",
         "conversations": [{"from": "human", "value": "Is it left?"}, {"from": "gpt", "value": "Yes"}]},  # no <image>
        {"id": "12", "image": "coco/train2017/000000000010.jpg", "task": "refcoco",
         "conversations": [{"from": "human", "value": "<image>\nPlease provide a short description for this region: "
                                                       "[0.1, 0.2, 0.3, 0.4]."}, {"from": "gpt", "value": "a dog"}]},
        {"id": "s1", "conversations": [{"from": "human", "value": "Write a haiku."}, {"from": "gpt", "value": "..."}]},
    ]
    for r in recs:
        if "image" in r:
            p = root / r["image"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(r["image"].encode())
    (tmp_path / "gen").mkdir()
    path = tmp_path / "gen" / "train.json"
    path.write_text(json.dumps(recs))
    return path, root, recs


def test_export_llava_symlink(train, tmp_path, capsys):
    path, root, recs = train
    out = tmp_path / "llava"
    assert main(["prepare", "export", "--train", str(path), "--image-root", str(root), "--to", "llava",
                 "--out", str(out)]) == 0
    assert "--data_path" in capsys.readouterr().out
    got = json.loads((out / "train.json").read_text())
    assert [r["id"] for r in got] == ["10", "11", "12", "s1"]
    assert got[0]["conversations"] == recs[0]["conversations"] and got[0]["task"] == "vqav2_okvqa"
    assert got[1]["conversations"][0]["value"] == "<image>\nIs it left?"  # token added for the trainer
    assert "image" not in got[3]
    for r in got[:3]:
        link = out / "images" / r["image"]
        assert link.is_symlink() and Path(os.readlink(link)).is_absolute()
        assert link.read_bytes() == (root / r["image"]).read_bytes()
    assert sorted(str(p.relative_to(out / "images")) for p in (out / "images").rglob("*.jpg")) == sorted(
        {r["image"] for r in recs if "image" in r})
    info = json.loads((out / "handoff.json").read_text())
    assert info["image_folder"] == str((out / "images").absolute()) and info["records"] == 4 and info["text_only"] == 1


def test_export_llama_factory_copy(train, tmp_path):
    path, root, recs = train
    out = tmp_path / "lf"
    info = export_training_set(path, root, out, to="llama-factory", image_mode="copy", name="presel15")
    ds = json.loads((out / "dataset_info.json").read_text())
    assert ds == {"presel15": {"file_name": "presel15.json", "formatting": "sharegpt",
                               "columns": {"messages": "messages", "images": "images"},
                               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                        "assistant_tag": "assistant", "system_tag": "system"}}}
    data = json.loads((out / "presel15.json").read_text())
    assert len(data) == 4 and info["dataset"] == "presel15"
    first = data[0]
    assert first["messages"][0] == {"role": "user", "content": recs[0]["conversations"][0]["value"]}
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
    assert first["images"] == ["images/coco/train2017/000000000010.jpg"]
    for r in data:  # LLaMA-Factory: one <image> per image, paths relative to dataset_dir (= media_dir)
        n_tok = sum(m["content"].count("<image>") for m in r["messages"])
        assert n_tok == len(r["images"])
        for im in r["images"]:
            f = out / im
            assert f.is_file() and not f.is_symlink()
    assert data[3]["images"] == []


def test_export_no_image_folder(train, tmp_path):
    path, root, _ = train
    info = export_training_set(path, root, tmp_path / "lf", to="llama-factory", image_mode="none")
    data = json.loads((tmp_path / "lf" / "presel_train.json").read_text())
    assert not (tmp_path / "lf" / "images").exists()
    assert all(Path(im).is_absolute() and Path(im).is_file() for r in data for im in r["images"])
    info = export_training_set(path, root, tmp_path / "ll", to="llava", image_mode="none")
    assert info["image_folder"] == str(root.absolute())


def test_export_bad_inputs(train, tmp_path, capsys):
    path, root, recs = train
    (root / recs[1]["image"]).unlink()
    assert main(["prepare", "export", "--train", str(path), "--image-root", str(root), "--to", "llava",
                 "--out", str(tmp_path / "o")]) == 2
    assert "1 of 2 images" in capsys.readouterr().err and not (tmp_path / "o").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "1", "image": "../x.jpg", "conversations": recs[0]["conversations"]}]))
    with pytest.raises(PreselError, match=r"record 1 \(id '1'\): image path '../x.jpg' must be relative"):
        export_training_set(bad, root, tmp_path / "o", to="llava")
    bad.write_text(json.dumps([{"id": "1", "image": "a.jpg", "conversations": [{"from": "gpt", "value": "A"}]}]))
    with pytest.raises(PreselError, match="turns must alternate"):
        export_training_set(bad, root, tmp_path / "o", to="llama-factory")
    bad.write_text(json.dumps([{"id": "1", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
                               {"id": "1", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]))
    with pytest.raises(PreselError, match="duplicate id '1'"):
        export_training_set(bad, root, tmp_path / "o", to="llava")
    with pytest.raises(PreselError, match="image_mode='hardlink'"):
        export_training_set(path, root, tmp_path / "o", to="llava", image_mode="hardlink")


@pytest.mark.parametrize("how", ["symlink", "dotdot"])
def test_export_never_copies_or_links_files_outside_the_image_root(train, tmp_path, capsys, how):
    path, root, recs = train
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=topsecret")
    if how == "symlink":  # a symlink inside the image root that points out of it
        (root / "gqa/images/2327515.jpg").unlink()
        (root / "gqa/images/2327515.jpg").symlink_to(secret)
    else:
        recs = [dict(r, image="../secret.txt") if r["id"] == "11" else r for r in recs]
        path.write_text(json.dumps(recs))
    out = tmp_path / "export"
    for mode in ("copy", "symlink"):
        rc = main(["prepare", "export", "--train", str(path), "--image-root", str(root), "--out", str(out), "--to", "llava",
                   "--image-mode", mode])
        assert rc == 2
        err = capsys.readouterr().err
        assert str(path) in err and "'11'" in err
        assert ("outside the image root" in err) if how == "symlink" else ("without '..'" in err)
        assert not out.exists()
