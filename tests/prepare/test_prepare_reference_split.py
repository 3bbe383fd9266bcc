"""The authors' released reference split (``round1_665k_notext.json``: records by ``unique_idx``, the index in
``llava_v1_5_mix665k_notext_add_idx.json``) as presel's reference set: ``presel reference --from-file`` and
``presel prepare llava665k --reference-split``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presel.cli import main
from presel.errors import PreselError
from presel.importance.reference import reference_from_file
from presel.io.manifest import read_pool
from presel.prepare import prepare_llava665k
from presel.prepare.common import iter_json_list
from presel.prepare.synthetic import make_fake_665k


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake665ref")
    make_fake_665k(d / "llava_v1_5_mix665k.json", seed=5)
    (d / "data").mkdir()
    prepare_llava665k(d / "llava_v1_5_mix665k.json", d / "data", d / "pool")
    # the authors' numbering: drop the text-only records, then number (their preprocess.py add_idx)
    notext = [rec for _, rec in iter_json_list(d / "llava_v1_5_mix665k.json") if rec.get("image")]
    original_pos = [p for p, rec in iter_json_list(d / "llava_v1_5_mix665k.json") if rec.get("image")]
    return d, notext, original_pos


def _split(path: Path, notext: list[dict], idx: list[int]) -> Path:
    path.write_text(json.dumps([{**notext[u], "unique_idx": u} for u in idx]))
    return path


def test_unique_idx_maps_to_the_records_they_name(fake, tmp_path):
    d, notext, original_pos = fake
    pool = read_pool(d / "pool" / "pool.jsonl", image_root=d / "data")
    idx = [17, 3, 250, len(notext) - 1, 42]
    got = reference_from_file(pool, _split(tmp_path / "round1_665k_notext.json", notext, idx))
    # presel's llava665k ids are positions in the original file: unique_idx u is the u-th image record
    assert [r.id for r in got] == [str(original_pos[u]) for u in sorted(idx)]
    assert [r.image for r in got] == [notext[u]["image"] for u in sorted(idx)]


def test_reference_cli_from_file_and_prepare_reference_split(fake, tmp_path, capsys):
    d, notext, original_pos = fake
    split = _split(tmp_path / "round1_665k_notext.json", notext, [5, 9, 11, 300])
    rc = main(["reference", "--pool", str(d / "pool" / "pool.jsonl"), "--image-root", str(d / "data"),
               "--from-file", str(split), "--protocol", "official", "--out", str(tmp_path / "ref")])
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "ref" / "reference.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(original_pos[u]) for u in (5, 9, 11, 300)]
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["total"]["reference"] == 4 and summary["from_file"] == str(split)
    s = prepare_llava665k(d / "llava_v1_5_mix665k.json", d / "data", tmp_path / "pool2", reference_split=split)
    assert s["reference"]["records"] == 4
    again = [json.loads(x) for x in (tmp_path / "pool2" / "reference" / "reference.jsonl").read_text().splitlines()]
    assert again == rows


def test_original_numbering_is_recognised(fake, tmp_path):
    d, notext, original_pos = fake
    pool = read_pool(d / "pool" / "pool.jsonl", image_root=d / "data")
    # a split numbered by position in the original file (text-only records counted)
    recs = [{**notext[q], "unique_idx": original_pos[q]} for q in (60, 61, 400)]
    (tmp_path / "orig.json").write_text(json.dumps(recs))
    got = reference_from_file(pool, tmp_path / "orig.json")
    assert [r.id for r in got] == [str(original_pos[q]) for q in (60, 61, 400)]


@pytest.mark.parametrize("recs,needle", [
    ([{"unique_idx": 10 ** 7}], "unique_idx 10000000 is out of range"),
    ([{"unique_idx": -1}], "unique_idx -1 must be an integer >= 0"),
    ([{"unique_idx": "3"}], "unique_idx '3' must be an integer"),
    ([{"id": "x"}], "record 0: expected an object with 'unique_idx'"),
    ([{"unique_idx": 3}, {"unique_idx": 3}], "record 1: unique_idx 3 repeats record 0"),
    ([{"unique_idx": 3, "image": "coco/train2017/none.jpg"}], "unique_idx 3 names image 'coco/train2017/none.jpg'"),
])
def test_bad_split_files_are_located(fake, tmp_path, capsys, recs, needle):
    d, _, _ = fake
    (tmp_path / "bad.json").write_text(json.dumps(recs))
    pool = read_pool(d / "pool" / "pool.jsonl", image_root=d / "data")
    with pytest.raises(PreselError, match="bad.json record") as e:
        reference_from_file(pool, tmp_path / "bad.json")
    assert needle in str(e.value)
    rc = main(["reference", "--pool", str(d / "pool" / "pool.jsonl"), "--image-root", str(d / "data"),
               "--from-file", str(tmp_path / "bad.json"), "--out", str(tmp_path / "ref")])
    assert rc == 2 and needle in capsys.readouterr().err and not (tmp_path / "ref").exists()
    rc = main(["prepare", "llava665k", "--annotations", str(d / "llava_v1_5_mix665k.json"), "--image-root",
               str(d / "data"), "--reference-split", str(tmp_path / "bad.json"), "--out", str(tmp_path / "p")])
    assert rc == 2 and needle in capsys.readouterr().err and not (tmp_path / "p").exists()


def test_pipeline_reference_from_file(fake, tmp_path):
    import yaml

    from presel.pipeline import Pipeline, RunConfig

    d, notext, original_pos = fake
    _split(tmp_path / "round1.json", notext, [7, 8, 100])
    cfg = {"out": "run", "protocol": "official", "pool": {"path": str(d / "pool" / "pool.jsonl"),
                                                          "image_root": str(d / "data")},
           "reference": {"from_file": "round1.json"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    Pipeline(RunConfig.load(tmp_path / "c.yaml"), log=lambda s: None).run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "reference" / "reference.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(original_pos[u]) for u in (7, 8, 100)]
