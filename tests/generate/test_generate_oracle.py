"""Oracle mode: instructions of the selected images from an annotated LLaVA dataset."""

import json

import pytest
from gen_fake_server import make_selection

from presel.errors import PreselError
from presel.generate.oracle import oracle_to_dir


def conv(q, a):
    return [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]


@pytest.fixture
def setup(tmp_path):
    sel = make_selection(tmp_path, {"s1": "vqa", "s2": "vqa", "s3": "caption", "s4": "vqa"}, {"r1": "vqa"})
    anns = [
        {"id": "s1", "image": "images/vqa/s1.png", "conversations": conv("q s1", "a s1")},
        # two records for s2's image in task vqa, one in another task, none by id
        {"id": "x1", "image": "./images/vqa/s2.png", "task": "vqa", "conversations": conv("q s2 a", "a")},
        {"id": "x2", "image": "images/vqa/s2.png", "task": "vqa", "conversations": conv("q s2 b", "b")},
        {"id": "x3", "image": "images/vqa/s2.png", "task": "caption", "conversations": conv("describe", "c")},
        # s3: annotated only for another task
        {"id": "x4", "image": "images/caption/s3.png", "task": "ocr", "conversations": conv("read", "d")},
        {"id": "r1", "image": "images/vqa/r1.png", "conversations": [{"from": "human", "value": "no token"},
                                                                    {"from": "gpt", "value": "ref"}]},
        {"id": "t1", "conversations": conv("text only", "x")},
    ]
    path = tmp_path / "anns.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in anns))
    return tmp_path, sel, path


def test_oracle_auto_match_keeps_all_records_and_records_missing(setup):
    tmp, sel, anns = setup
    s = oracle_to_dir(sel, anns, tmp / "gen")
    train = json.loads((tmp / "gen" / "train.json").read_text())
    ids = [r["id"] for r in train]
    assert ids == ["r1", "s1", "s2", "s2#1"]
    assert [r["conversations"][0]["value"] for r in train if r["id"].startswith("s2")] == ["<image>\nq s2 a",
                                                                                         "<image>\nq s2 b"]
    assert train[0]["conversations"][0]["value"] == "<image>\nno token"
    assert all(r["image"].startswith("images/") for r in train)
    fails = [json.loads(x) for x in (tmp / "gen" / "failures.jsonl").read_text().splitlines()]
    assert {f["id"] for f in fails} == {"s3", "s4"}
    why = {f["id"]: f["error"] for f in fails}
    assert "only for task(s) ocr" in why["s3"] and "no annotation for image" in why["s4"]
    assert s["selected"] == 4 and s["generated"] == 2 and s["failed"] == 2 and s["train_records"] == 4
    assert s["annotations_skipped"] == {"text-only": 1}
    assert s["reference"]["annotated"] == 1
    res = [json.loads(x) for x in (tmp / "gen" / "results.jsonl").read_text().splitlines()]
    assert {r["id"]: r["annotation_ids"] for r in res} == {"s1": ["s1"], "s2": ["x1", "x2"]}


def test_oracle_match_id_only_and_separate_reference(setup):
    tmp, sel, anns = setup
    ref = tmp / "ref.json"
    ref.write_text(json.dumps([{"id": "r1", "image": "images/vqa/r1.png", "conversations": conv("rq", "ra")}]))
    s = oracle_to_dir(sel, anns, tmp / "gen", reference_annotations=ref, match="id", format="sharegpt")
    assert s["generated"] == 1 and s["failed"] == 3
    sg = json.loads((tmp / "gen" / "train_sharegpt.json").read_text())
    assert [r["id"] for r in sg] == ["r1", "s1"] and sg[0]["messages"][1] == {"role": "assistant", "content": "ra"}
    # deterministic: the same inputs give byte-identical outputs
    oracle_to_dir(sel, anns, tmp / "gen2", reference_annotations=ref, match="id", format="sharegpt")
    for name in ("train.json", "train_sharegpt.json", "results.jsonl", "failures.jsonl", "summary.json"):
        assert (tmp / "gen" / name).read_bytes() == (tmp / "gen2" / name).read_bytes()
    with pytest.raises(PreselError, match="already exists"):
        oracle_to_dir(sel, anns, tmp / "gen", match="id")


def test_oracle_cli_and_bad_inputs(setup):
    from presel.cli import main

    tmp, sel, anns = setup
    assert main(["generate", "--selection", str(sel), "--from-annotations", str(anns), "--match", "image",
                 "--out", str(tmp / "gen")]) == 0
    assert main(["generate", "--selection", str(sel), "--from-annotations", str(tmp / "nope.json"),
                 "--out", str(tmp / "gen9")]) == 2
    bad = tmp / "bad.jsonl"
    bad.write_text(json.dumps({"id": "s1", "image": "a.png"}) + "\n")
    with pytest.raises(PreselError, match="bad.jsonl line 1: record 's1' has no 'conversations'"):
        oracle_to_dir(sel, bad, tmp / "gen3")
    badsel = tmp / "badsel.jsonl"
    badsel.write_text(json.dumps({"id": "a", "image": "x.png", "task": "t", "source": "maybe"}) + "\n")
    with pytest.raises(PreselError, match="badsel.jsonl line 1: source='maybe'"):
        oracle_to_dir(badsel, anns, tmp / "gen4")
