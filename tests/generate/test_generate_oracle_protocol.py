"""Oracle generation under ``protocol: official``: every record of a picked image is trained (the authors train
all the instructions of their picks; A-OKVQA has one record per answer order of an image)."""

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


def test_official_trains_every_record_of_a_picked_image_once(tmp_path):
    sel, anns = _setup(tmp_path)
    s = oracle_to_dir(sel, anns, tmp_path / "gen", protocol="official")
    ids = [r["id"] for r in json.loads((tmp_path / "gen" / "train.json").read_text())]
    # reference r0; A's three aok records once (a2 was not picked itself); both of B's; c1 (r0 not again); v0
    assert ids == ["r0", "a0", "a1", "a2", "b0", "b1", "c1", "v0"]
    assert s["protocol"] == "official" and s["failed"] == 0 and s["train_records"] == 8
    cfg = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert cfg["config"]["protocol"] == "official"


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
    assert "8 training records" in capsys.readouterr().out
