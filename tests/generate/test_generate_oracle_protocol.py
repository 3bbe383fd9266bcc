"""Oracle generation under ``protocol: official``: exactly the reference records and the picked records are trained
(the authors' extract_and_add_samples keeps the reference plus the picked unique_idx), not every record of a picked
image (A-OKVQA has one record per answer order of an image; a quota can split them)."""

import json

from presel.generate.oracle import oracle_to_dir


def conv(q, a):
    return [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]


def _setup(tmp_path):
    # a protocol-official selection: rows are records; image A (3 records in aok) picked through 2 of them,
    # image B (2 records in aok) through 1, record r0 of image C in the reference set (C has another record)
    rows = [
        {"id": "r0", "image": "img/C.jpg", "task": "aok", "source": "reference"},
        {"id": "a0", "image": "img/A.jpg", "task": "aok", "source": "selected"},
        {"id": "a1", "image": "img/A.jpg", "task": "aok", "source": "selected"},
        {"id": "b0", "image": "img/B.jpg", "task": "aok", "source": "selected"},
        {"id": "c1", "image": "img/C.jpg", "task": "aok", "source": "selected"},
        {"id": "v0", "image": "img/A.jpg", "task": "vqa", "source": "selected"},
    ]
    sel = tmp_path / "selection.jsonl"
    sel.write_text("".join(json.dumps({**r, "cluster": 0, "nc_score": None, "rank": None}) + "\n" for r in rows))
    anns = [{"id": f"a{i}", "image": "img/A.jpg", "task": "aok", "conversations": conv(f"qa{i}", "A")} for i in range(3)]
    anns += [{"id": f"b{i}", "image": "img/B.jpg", "task": "aok", "conversations": conv(f"qb{i}", "B")} for i in range(2)]
    anns += [{"id": "r0", "image": "img/C.jpg", "task": "aok", "conversations": conv("qr", "R")},
             {"id": "c1", "image": "img/C.jpg", "task": "aok", "conversations": conv("qc", "C")},
             {"id": "v0", "image": "img/A.jpg", "task": "vqa", "conversations": conv("qv", "V")}]
    path = tmp_path / "anns.json"
    path.write_text(json.dumps(anns))
    return sel, path


def test_official_trains_exactly_the_picked_records(tmp_path):
    sel, anns = _setup(tmp_path)
    s = oracle_to_dir(sel, anns, tmp_path / "gen", protocol="official")
    ids = [r["id"] for r in json.loads((tmp_path / "gen" / "train.json").read_text())]
    # reference r0, then the picked records only: a2 and b1 (other records of picked images) are not trained
    assert ids == ["r0", "a0", "a1", "b0", "c1", "v0"]
    assert s["protocol"] == "official" and s["failed"] == 0 and s["train_records"] == 6
    assert s["match"].startswith("id")
    cfg = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert cfg["config"]["protocol"] == "official"


def test_official_ignores_match_image_and_fails_a_missing_record(tmp_path):
    sel, anns = _setup(tmp_path)
    rows = [json.loads(x) for x in sel.read_text().splitlines()]
    rows.append({**rows[1], "id": "a9"})  # a picked record of image A with no annotation of its own
    sel.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = oracle_to_dir(sel, anns, tmp_path / "gen", protocol="official", match="image")
    ids = [r["id"] for r in json.loads((tmp_path / "gen" / "train.json").read_text())]
    assert ids == ["r0", "a0", "a1", "b0", "c1", "v0"] and s["failed"] == 1
    fail = [json.loads(x) for x in (tmp_path / "gen" / "failures.jsonl").read_text().splitlines()]
    assert fail[0]["id"] == "a9" and "no annotation with id 'a9'" in fail[0]["error"]


def test_paper_keeps_the_record_it_matched(tmp_path):
    sel, anns = _setup(tmp_path)
    s = oracle_to_dir(sel, anns, tmp_path / "gen", protocol="paper")
    ids = [r["id"] for r in json.loads((tmp_path / "gen" / "train.json").read_text())]
    assert ids == ["r0", "a0", "a1", "b0", "c1", "v0"]  # match auto: by id
    assert s["protocol"] == "paper"


def test_cli_protocol(tmp_path, capsys):
    from presel.cli import main

    sel, anns = _setup(tmp_path)
    assert main(["generate", "--selection", str(sel), "--from-annotations", str(anns), "--protocol", "official",
                 "--out", str(tmp_path / "gen")]) == 0
    assert "6 training records" in capsys.readouterr().out
