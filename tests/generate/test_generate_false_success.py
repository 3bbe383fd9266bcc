"""Nothing usable is no success (exit 3 with the counts, unless --allow-partial); result lines of the wrong types
are one located error."""

import json

import pytest
from gen_fake_server import make_selection

from presel.cli import main


def _requests(tmp_path, capsys, ids=("a", "b")):
    sel = make_selection(tmp_path, {i: "vqa" for i in ids})
    out = tmp_path / "gen"
    assert main(["generate", "--selection", str(sel), "--mode", "batch-file", "--model", "m", "--out", str(out)]) == 0
    capsys.readouterr()
    return out, [json.loads(x) for x in (out / "requests-00000.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("line, needle", [
    ({"custom_id": 123, "response": "oops"}, "'custom_id' must be a string, got a number 123"),
    ({"custom_id": "a", "response": "oops"}, "'response' must be an object or null, got a string 'oops'"),
    ({"custom_id": "a", "response": {"status_code": 200, "body": {"usage": {"prompt_tokens": "many"}}}},
     "fields of unexpected types"),
    ({"custom_id": ["a"], "result": {"type": "succeeded"}}, "'custom_id' must be a string, got a list"),
    ({"key": {"k": 1}, "response": {}}, "'key' must be a string, got an object"),
])
def test_collect_line_of_wrong_types(tmp_path, capsys, line, needle):
    out, _ = _requests(tmp_path, capsys)
    res = tmp_path / "results.jsonl"
    res.write_text(json.dumps({"custom_id": "x", "error": {"message": "e"}}) + "\n" + json.dumps(line) + "\n")
    assert main(["generate", "--collect", str(res), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{res} line 2: not a valid" in err and needle in err and "Traceback" not in err, err


def test_collect_where_every_line_is_an_error_exits_3(tmp_path, capsys):
    out, reqs = _requests(tmp_path, capsys)
    res = tmp_path / "results.jsonl"
    res.write_text("".join(json.dumps({"custom_id": q["custom_id"], "response": {
        "status_code": 500, "request_id": f"r{i}", "body": {"error": {"message": "boom"}}}, "error": None}) + "\n"
        for i, q in enumerate(reqs)))
    assert main(["generate", "--collect", str(res), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "finished, nothing usable: 0 of 2 selected item(s) generated, 2 failed" in err and "--allow-partial" in err
    assert main(["generate", "--collect", str(res), "--out", str(out), "--allow-partial"]) == 0


def test_online_where_every_request_fails_exits_3(tmp_path, server, capsys):
    sel = make_selection(tmp_path, {f"s{i}": "vqa" for i in range(3)})
    server.script = {f"s{i}": ["500"] * 20 for i in range(3)}
    args = ["generate", "--selection", str(sel), "--model", "fake-vlm", "--base-url", server.base_url,
            "--max-retries", "1", "--backoff-base", "0.01", "--backoff-max", "0.02", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "gen")]) == 3
    err = capsys.readouterr().err
    assert "finished, nothing usable: 0 of 3 selected item(s) generated, 3 failed" in err
    assert main([*args, "--out", str(tmp_path / "gen2"), "--allow-partial"]) == 0


def test_online_where_every_answer_is_unparseable_exits_3(tmp_path, server, capsys):
    sel = make_selection(tmp_path, {"s0": "vqa", "s1": "vqa"})
    server.script = {"s0": ["malformed"] * 10, "s1": ["malformed"] * 10}
    rc = main(["generate", "--selection", str(sel), "--model", "fake-vlm", "--base-url", server.base_url,
               "--parse-retries", "0", "--no-progress", "--out", str(tmp_path / "gen")])
    assert rc == 3 and "nothing usable" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, needle", [
    ("image", "a\u0000b.png", "holds a NUL byte"),
    ("id", ["x"], "'id' must be a string or a number, got list"),
    ("task", {"t": 1}, "'task' must be a string or a number, got dict"),
    ("image", 3, "'image' must be a path string"),
])
def test_selection_rows_of_wrong_types(tmp_path, field, value, needle):
    from presel.errors import PreselError
    from presel.generate.store import read_selection

    rec = {"id": "a", "image": "a.png", "task": "t", "source": "selected", field: value}
    (tmp_path / "sel.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(PreselError, match="sel.jsonl line 1: ") as e:
        read_selection(tmp_path / "sel.jsonl")
    assert needle in str(e.value)


def test_run_stops_with_exit_3_when_every_request_fails(tmp_path, capsys):
    import numpy as np
    import yaml
    from gen_fake_server import FakeOpenAI
    from PIL import Image

    rows = []
    for i in range(12):
        img = f"img/{i}.png"
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (i * 20, 40, 90)).save(tmp_path / img)
        rows.append({"id": f"r{i}", "image": img, "task": "t"})
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    (tmp_path / "ids.txt").write_text("".join(r["id"] + "\n" for r in rows))
    with FakeOpenAI() as srv:
        srv.default = "500"
        cfg = {"out": "run", "pool": {"path": "pool.jsonl"},
               "select": {"budget_count": 4, "seed": 0, "task_weights": "uniform", "images_per_cluster": 4,
                          "features": "f.npy", "feature_ids": "ids.txt"},
               "generate": {"base_url": srv.base_url, "model": "fake-vlm", "max_retries": 0, "backoff_base": 0.01}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["run", str(tmp_path / "c.yaml")]) == 3
    err = capsys.readouterr().err
    assert "finished, nothing usable: 0 of 4 selected item(s) generated, 4 failed" in err
    assert not (tmp_path / "run" / "generate" / ".presel-stage.json").exists()  # not marked finished
