"""presel prepare vision-flan on a synthetic file with the real record shape."""

from __future__ import annotations

import json

import pytest

from presel.cli import main
from presel.prepare import prepare_vision_flan
from presel.prepare.synthetic import make_fake_vision_flan


@pytest.fixture(scope="module")
def vf(tmp_path_factory):
    d = tmp_path_factory.mktemp("vf")
    truth = make_fake_vision_flan(d / "annotation_191-task_1k.json", n_tasks=14, per_task=40, seed=5, empty_answers=3)
    (d / "images_191task_1k").mkdir()
    return d, truth


def test_vision_flan_pool(vf, tmp_path, capsys):
    d, truth = vf
    ann = d / "annotation_191-task_1k.json"
    assert main(["prepare", "vision-flan", "--annotations", str(ann), "--image-root", str(d / "images_191task_1k"),
                 "--out", str(tmp_path / "pool")]) == 0
    out = capsys.readouterr().out
    assert "14 tasks" in out and "3 empty answers (kept)" in out
    s = json.loads((tmp_path / "pool" / "summary.json").read_text())
    assert s["tasks"] == truth["tasks"] and s["n_tasks"] == 14 and s["image_records"] == truth["records"]
    assert s["empty_answers"] == {"count": 3, "first_ids": [str(i) for i in truth["empty"]]}
    assert s["duplicate_orig_ids"] > 0  # ids repeat in the file, so positions are the ids
    data = json.loads(ann.read_text())
    rows = [json.loads(x) for x in (tmp_path / "pool" / "pool.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(len(data))]
    assert all(r["task"] == data[i]["task_name"] and r["orig_id"] == data[i]["id"] and r["image"] == data[i]["image"]
               for i, r in enumerate(rows))
    tasks = json.loads((tmp_path / "pool" / "tasks.json").read_text())
    assert tasks["order"] == truth["order"]  # first-seen order, as PreSel's task_names.json
    ann_out = json.loads((tmp_path / "pool" / "annotations.json").read_text())
    assert ann_out[0]["task_name"] == ann_out[0]["task"] and ann_out[0]["id"] == "0"


def test_vision_flan_bad_records(tmp_path, capsys):
    ann = tmp_path / "vf.json"
    (tmp_path / "img").mkdir()
    ann.write_text(json.dumps([{"id": "x", "image": "a.jpg",
                                "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}]))
    assert main(["prepare", "vision-flan", "--annotations", str(ann), "--image-root", str(tmp_path / "img"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "record 0 (id 'x'): missing 'task_name'" in err and str(ann) in err
    ann.write_text(json.dumps({"data": []}))
    assert main(["prepare", "vision-flan", "--annotations", str(ann), "--image-root", str(tmp_path / "img"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "expected a JSON list" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_vision_flan_no_image_counted(tmp_path):
    ann = tmp_path / "vf.json"
    (tmp_path / "img").mkdir()
    conv = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    ann.write_text(json.dumps([{"id": "a", "image": "a.jpg", "task_name": "T1", "conversations": conv},
                               {"id": "a", "task_name": "T1", "conversations": [{"from": "human", "value": "Q"},
                                                                                {"from": "gpt", "value": "A"}]},
                               {"id": "b", "image": "b.jpg", "task_name": "T2", "conversations": conv}]))
    s = prepare_vision_flan(ann, tmp_path / "img", tmp_path / "o", check_images=True)
    assert s["no_image_dropped"] == 1 and s["tasks"] == {"T1": 1, "T2": 1}
    assert s["missing_images"] == {"count": 2, "first": ["a.jpg", "b.jpg"]}
    rows = [json.loads(x) for x in (tmp_path / "o" / "pool.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0", "2"]


def test_fake_images_for_end_to_end(vf, tmp_path):
    from PIL import Image

    from presel.prepare.synthetic import make_fake_images

    d, truth = vf
    root = tmp_path / "imgs"
    n = make_fake_images(d / "annotation_191-task_1k.json", root, size=16)
    s = prepare_vision_flan(d / "annotation_191-task_1k.json", root, tmp_path / "pool", check_images=True)
    assert n == s["distinct_images"] and s["missing_images"]["count"] == 0
    first = next(root.rglob("*.jpg"))
    with Image.open(first) as im:
        assert im.size == (16, 16) and im.format == "JPEG"
    assert make_fake_images(d / "annotation_191-task_1k.json", root) == 0  # existing files are kept
