"""presel prepare llava665k on a synthetic file with the real record shapes and known sources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from presel.cli import main
from presel.errors import PreselError
from presel.prepare import load_task_table, prepare_llava665k
from presel.prepare.common import iter_json_list
from presel.prepare.rules import DEFAULT_TABLE
from presel.prepare.synthetic import RULE_SOURCE, make_fake_665k, write_split_files


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake665")
    truth = make_fake_665k(d / "llava_v1_5_mix665k.json", seed=3)
    (d / "data").mkdir()
    return d, truth


@pytest.fixture(scope="module")
def prepared(fake):
    d, truth = fake
    out = d / "pool"
    summary = prepare_llava665k(d / "llava_v1_5_mix665k.json", d / "data", out)
    return out, summary


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


def test_fixture_copies_real_shapes(fake):
    d, truth = fake
    data = json.loads((d / "llava_v1_5_mix665k.json").read_text())
    by = {}
    for s, r in zip(truth, data):
        by.setdefault(s, []).append(r)
    assert all(len(r["id"]) == 12 and r["id"].isdigit() and r["image"] == f"coco/train2017/{r['id']}.jpg"
               for r in by["llava_conversation"])
    assert all(isinstance(r["id"], int) and r["image"] == f"gqa/images/{r['id']}.jpg" for r in by["gqa"])
    assert any(r["id"].endswith("X") for r in by["ocrvqa"]) and all(len(r["id"]) == 10 for r in by["ocrvqa"])
    assert all("image" not in r and r["model"] == "" for r in by["sharegpt"])
    firsts = [r["conversations"][0]["value"] for s in by if s != "sharegpt" for r in by[s]]
    assert any(v.startswith("<image>\n") for v in firsts) and any(v.endswith("\n<image>") for v in firsts)
    assert all(sum(t["value"].count("<image>") for t in r["conversations"]) == 1 for s in by if s != "sharegpt" for r in by[s])
    assert all(len(r["conversations"]) > 2 for r in by["llava_conversation"])
    assert all(len(r["conversations"]) == 2 for r in by["llava_detail"] + by["llava_complex"])
    assert all("\nA. " in r["conversations"][0]["value"] for r in by["aokvqa"])
    # VQA suffix on the first human turn only
    vqa = [r for r in by["vqav2"] if len(r["conversations"]) > 2]
    assert vqa and all("single word" not in r["conversations"][2]["value"] for r in vqa)
    assert all(r["image"].startswith(("vg/VG_100K/", "vg/VG_100K_2/")) for r in by["vg"])
    assert any("[0." in t["value"] for r in by["refcoco"] for t in r["conversations"])


def test_rules_recover_every_record(fake, prepared):
    d, truth = fake
    out, summary = prepared
    rows = read_jsonl(out / "pool.jsonl")
    table = load_task_table()
    assert len(rows) == sum(1 for s in truth if s != "sharegpt")
    for r in rows:
        want = RULE_SOURCE[truth[int(r["id"])]]
        assert r["source"] == want, r
        assert r["task"] == table.tasks[want]
    expected = Counter(RULE_SOURCE[s] for s in truth if s != "sharegpt")
    assert summary["sources"] == dict(sorted(expected.items()))
    assert summary["text_only_dropped"] == truth.count("sharegpt") > 0
    assert summary["records_in_file"] == len(truth)
    tasks = json.loads((out / "tasks.json").read_text())
    assert {t: v["records"] for t, v in tasks["tasks"].items()} == {table.tasks[s]: n for s, n in expected.items()}
    assert len(tasks["order"]) == 10 and tasks["records"] == len(rows)
    assert summary["check_702"]["match"] is False  # a 3K fake is not the real file


def test_ids_annotations_and_reading(fake, prepared):
    d, truth = fake
    out, _ = prepared
    data = json.loads((d / "llava_v1_5_mix665k.json").read_text())
    rows = read_jsonl(out / "pool.jsonl")
    ann = json.loads((out / "annotations.json").read_text())
    assert [r["id"] for r in rows] == [a["id"] for a in ann] == [str(p) for p, s in enumerate(truth) if s != "sharegpt"]
    for r, a in zip(rows, ann):
        src = data[int(r["id"])]
        assert r["orig_id"] == src["id"] == a["orig_id"]  # type kept (GQA ids are integers)
        assert r["image"] == src["image"] and r["conversations"] == src["conversations"] == a["conversations"]
        assert a["task"] == r["task"]
    assert any(isinstance(r["orig_id"], int) for r in rows)
    from presel.io.manifest import read_pool

    pool = read_pool(out / "pool.jsonl", image_root=d / "data")
    assert len(pool) == len(rows) and pool.records[0].conversations[0].role == "user"
    assert pool.image_path(pool.records[0]) == d / "data" / rows[0]["image"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stage"] == "prepare-llava665k" and cfg["config"]["split_index"] == "auto"


def test_deterministic(fake, prepared, tmp_path):
    d, _ = fake
    out, _ = prepared
    prepare_llava665k(d / "llava_v1_5_mix665k.json", d / "data", tmp_path / "again")
    for f in ("pool.jsonl", "annotations.json", "tasks.json", "summary.json"):
        assert (tmp_path / "again" / f).read_bytes() == (out / f).read_bytes(), f


def test_eight_task_table(fake, tmp_path):
    d, truth = fake
    s = prepare_llava665k(d / "llava_v1_5_mix665k.json", d / "data", tmp_path / "p9",
                          tasks_config=DEFAULT_TABLE.with_name("llava665k_tasks_8.yaml"))
    n_llava = sum(1 for t in truth if t.startswith("llava_"))
    assert len(s["tasks"]) == 8 and s["tasks"]["llava_instruct"] == n_llava


@pytest.mark.parametrize("numbering", ["notext", "original"])
def test_splits_agreement_and_numbering(fake, tmp_path, numbering):
    d, truth = fake
    ann = d / "llava_v1_5_mix665k.json"
    # authors-style split: true sources, but VQAv2 and OKVQA kept apart and 7 detail records put under complex
    task_of = []
    moved = 0
    for s in truth:
        if s == "sharegpt":
            task_of.append(None)
        elif s == "llava_detail" and moved < 7:
            task_of.append("file3_665")
            moved += 1
        else:
            task_of.append({"llava_complex": "file3_665", "okvqa": "file11_665"}.get(s, f"t_{s}"))
    sizes = write_split_files(tmp_path / "splits", ann, task_of, numbering=numbering)
    s = prepare_llava665k(ann, d / "data", tmp_path / "pool", splits=tmp_path / "splits")
    assert s["task_source"] == "splits" and s["splits"]["index"] == numbering
    rows = read_jsonl(tmp_path / "pool" / "pool.jsonl")
    assert all(r["task"] == task_of[int(r["id"])] for r in rows)
    assert s["tasks"] == {t: sizes[t] for t in s["tasks"]} and set(s["tasks"]) == set(sizes)
    agr = s["splits"]["agreement"]
    n_complex = truth.count("llava_complex")
    assert agr["confusion"]["file3_665"] == {"llava_complex": n_complex, "llava_detail": 7}
    assert agr["confusion"]["file11_665"] == {"vqav2_okvqa": truth.count("okvqa")}
    assert agr["best_rule_task"]["t_vqav2"] == "vqav2_okvqa"
    assert agr["records"] == len(rows) and agr["records_agreeing"] == len(rows) - 7
    # natural file order: file3 before file11
    assert list(s["splits"]["files"]).index("file3_665") < list(s["splits"]["files"]).index("file11_665")


def test_splits_matched_by_content(fake, tmp_path):
    d, truth = fake
    ann = d / "llava_v1_5_mix665k.json"
    task_of = [None if s == "sharegpt" else RULE_SOURCE[s] for s in truth]
    write_split_files(tmp_path / "splits", ann, task_of, with_idx=False)
    s = prepare_llava665k(ann, d / "data", tmp_path / "pool", splits=tmp_path / "splits")
    assert s["splits"]["index"] == "content" and s["splits"]["agreement"]["rate"] == 1.0


def test_splits_matched_by_id_and_image(fake, tmp_path):
    d, truth = fake
    ann = d / "llava_v1_5_mix665k.json"
    data = json.loads(ann.read_text())
    groups: dict[str, list] = {}
    for s, r in zip(truth, data):
        if s != "sharegpt":
            groups.setdefault(RULE_SOURCE[s], []).append({"id": r["id"], "image": r["image"]})
    (tmp_path / "s").mkdir()
    for t, recs in groups.items():
        (tmp_path / "s" / f"{t}.json").write_text(json.dumps(recs))
    # COCO images carry records of several sources: id + image is ambiguous there, and says so
    with pytest.raises(PreselError, match=r"is also in .*id \+ image name an image, not a record"):
        prepare_llava665k(ann, d / "data", tmp_path / "pool", splits=tmp_path / "s")
    # without the shared COCO folder, (id, image) pairs are unique and match
    keep = [i for i, r in enumerate(data) if "image" in r and not r["image"].startswith("coco/")]
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps([data[i] for i in keep]))
    for f in (tmp_path / "s").iterdir():
        recs = [r for r in json.loads(f.read_text()) if not r["image"].startswith("coco/")]
        f.unlink() if not recs else f.write_text(json.dumps(recs))
    s = prepare_llava665k(sub, d / "data", tmp_path / "pool", splits=tmp_path / "s")
    assert s["splits"]["index"] == "content" and s["splits"]["agreement"]["rate"] == 1.0
    assert s["tasks"] == dict(Counter(RULE_SOURCE[truth[i]] for i in keep))


def _split_dir(tmp_path: Path, files: dict[str, list[dict]]) -> Path:
    d = tmp_path / "bad_splits"
    d.mkdir(parents=True)
    for name, recs in files.items():
        (d / f"{name}.json").write_text(json.dumps(recs))
    return d


def _cli(*args) -> int:
    return main(["prepare", *map(str, args)])


def test_split_errors(fake, tmp_path, capsys):
    d, truth = fake
    ann = d / "llava_v1_5_mix665k.json"
    data = json.loads(ann.read_text())
    img = [p for p, r in enumerate(data) if "image" in r]
    rec = lambda p, q: {"id": data[p]["id"], "image": data[p]["image"], "unique_idx": q}  # noqa: E731
    # overlapping tasks
    sd = _split_dir(tmp_path / "o", {"a": [rec(img[0], 0)], "b": [rec(img[0], 0)]})
    assert _cli("llava665k", "--annotations", ann, "--image-root", d / "data", "--out", tmp_path / "x", "--splits", sd) == 2
    err = capsys.readouterr().err
    assert "b.json record 0" in err and "unique_idx 0 is also in" in err and "a.json" in err and "must not overlap" in err
    # unknown index
    sd = _split_dir(tmp_path / "u", {"a": [rec(img[0], 0), {"id": "zz", "image": "coco/x.jpg", "unique_idx": 10**7}]})
    assert _cli("llava665k", "--annotations", ann, "--image-root", d / "data", "--out", tmp_path / "x", "--splits", sd) == 2
    err = capsys.readouterr().err
    assert "unique_idx does not match" in err and "beyond" in err
    assert "a.json record 1: unique_idx 10000000" in err
    # not covering every image record
    sd = _split_dir(tmp_path / "c", {"a": [rec(img[0], 0)]})
    first_image = img[1] if img[1] != img[0] else img[2]
    with pytest.raises(PreselError, match=rf"image records are in no split file \(first: .*record {first_image}\)"):
        prepare_llava665k(ann, d / "data", tmp_path / "x", splits=sd)
    # wrong numbering forced
    task_of = [None if s == "sharegpt" else "t" for s in truth]
    write_split_files(tmp_path / "n" / "s", ann, task_of, numbering="notext")
    with pytest.raises(PreselError, match=r"--split-index original"):
        prepare_llava665k(ann, d / "data", tmp_path / "x", splits=tmp_path / "n" / "s", split_index="original")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("content, needle", [
    ('{"id": "1", "image": "coco/a.jpg"}', "expected a JSON list of records, found a JSON object"),
    ('{"id": "1"}\n{"id": "2"}\n', "looks like JSONL"),
    ('[{"id": "1", "image": "coco/a.jpg", "conversations": [{"from": "human", "value": "<image>\\nQ"}, '
     '{"from": "gpt", "value": "A"}]}, {"id": "2", "image": "coco/b.jpg"}]', "record 1 (id '2'): missing 'conversations'"),
    ('[{"image": "coco/a.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]',
     "record 0: missing 'id'"),
    ('[{"id": "1", "image": "sam/a.jpg", "conversations": [{"from": "human", "value": "<image>\\nQ"}, '
     '{"from": "gpt", "value": "A"}]}]', "no prefix rule matches image 'sam/a.jpg'"),
    ('[{"id": "1", "image": "coco/a.jpg", "conversations": [{"from": "gpt", "value": "A"}]}]', "turn 0 must be"),
    ('[{"id": "1", "image": "coco/a.jpg", "conversations": [{"from": "human", "value": "Q"}, ', "truncated"),
    ('[{"id": "1", "conversations": [{"from": "human", "value": "Q"}]},]', "trailing ','"),
    ('[1, 2]', "record 0: expected a JSON object"),
])
def test_bad_annotations_exit_2(tmp_path, capsys, content, needle):
    ann = tmp_path / "bad.json"
    ann.write_text(content)
    (tmp_path / "data").mkdir()
    assert _cli("llava665k", "--annotations", ann, "--image-root", tmp_path / "data", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert needle in err and str(ann) in err
    assert not (tmp_path / "out").exists()


def test_bad_tasks_config_and_image_root(fake, tmp_path, capsys):
    d, _ = fake
    ann = d / "llava_v1_5_mix665k.json"
    cfg = tmp_path / "t.yaml"
    cfg.write_text("prefixes:\n  coco/: coco\n  gqa/: gqa\ntasks:\n  gqa: gqa\n")
    assert _cli("llava665k", "--annotations", ann, "--image-root", d / "data", "--out", tmp_path / "o",
                "--tasks-config", cfg) == 2
    assert "no task for source(s) aokvqa, llava_complex" in capsys.readouterr().err
    assert _cli("llava665k", "--annotations", ann, "--image-root", tmp_path / "nope", "--out", tmp_path / "o") == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_prints_counts_and_check_images(fake, tmp_path, capsys):
    d, truth = fake
    ann = d / "llava_v1_5_mix665k.json"
    data = json.loads(ann.read_text())
    first = next(r["image"] for r in data if "image" in r)
    root = tmp_path / "root"
    (root / first).parent.mkdir(parents=True)
    (root / first).write_bytes(b"x")
    assert _cli("llava665k", "--annotations", ann, "--image-root", root, "--out", tmp_path / "o", "--check-images") == 0
    out = capsys.readouterr().out
    assert f"{truth.count('sharegpt'):,} text-only dropped" in out and "llava_detail" in out and "#702: no" in out
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    n_images = len({r["image"] for r in data if "image" in r})
    assert s["missing_images"]["count"] == n_images - 1 and first not in s["missing_images"]["first"]


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_streaming_reader_matches_json_load(fake, chunk):
    d, _ = fake
    ann = d / "llava_v1_5_mix665k.json"
    data = json.loads(ann.read_text())
    got = [r for _, r in iter_json_list(ann, chunk_chars=chunk)]
    assert got == data


def test_streaming_reader_edge_cases(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(' [ ] \n')
    assert list(iter_json_list(p)) == []
    p.write_bytes(b'\xef\xbb\xbf[{"a": "\xc3\xa9"}]')  # UTF-8 BOM, non-ASCII text
    assert list(iter_json_list(p)) == [(0, {"a": "\u00e9"})]
    p.write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(PreselError, match="not UTF-8"):
        list(iter_json_list(p))
    p.write_text('[{"a": true}, {"b": false}, {"c": null}, {"d": -1.5e3}]')
    assert [r for _, r in iter_json_list(p, chunk_chars=3)] == [{"a": True}, {"b": False}, {"c": None}, {"d": -1500.0}]
    p.write_text('[{"a": 1}] [')
    with pytest.raises(PreselError, match="extra data after the closing"):
        list(iter_json_list(p))
    p.write_text('[{"a": 1} {"b": 2}]')
    with pytest.raises(PreselError, match=r"line 1: expected ',' or ']'|expected ',' or ']'"):
        list(iter_json_list(p))
    p.write_text('[{"a": 1},\n{"b": nope}]')
    with pytest.raises(PreselError, match=r"record 1 \(line 2\): not valid JSON"):
        list(iter_json_list(p, chunk_chars=4))
