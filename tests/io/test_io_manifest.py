import json

import numpy as np
import pytest

from presel.cli import main
from presel.errors import PreselError
from presel.io.atomic import atomic_dir, write_jsonl
from presel.io.features import load_features
from presel.io.manifest import load_task_map, parse_task_rules, read_id_list, read_pool


def _llava(tmp_path):
    recs = [
        {"id": "a", "image": "coco/1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A dog."}]},
        {"id": "b", "model": "", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": 7, "image": "./gqa/2.jpg", "conversations": []},
    ]
    p = tmp_path / "pool.json"
    p.write_text(json.dumps(recs))
    return p


def test_llava_json_rules_and_text_only(tmp_path):
    pool = read_pool(_llava(tmp_path), task_rules=["coco/=coco", "gqa/=gqa"])
    assert [r.id for r in pool.records] == ["a", "7"]
    assert [r.task for r in pool.records] == ["coco", "gqa"]
    assert pool.text_only == 1
    assert pool.records[1].image_key == "gqa/2.jpg"
    assert pool.records[0].conversations[0].role == "user"
    assert pool.records[0].conversations[1].text == "A dog."
    assert pool.image_path(pool.records[0]) == tmp_path / "coco/1.jpg"


def test_task_sources_precedence(tmp_path):
    p = tmp_path / "pool.jsonl"
    write_jsonl(p, [{"id": "x", "image": "i/1.png", "task_name": "vf"}, {"id": "y", "image": "i/2.png", "task": "t"}])
    assert [r.task for r in read_pool(p).records] == ["vf", "t"]
    m = tmp_path / "map.json"
    m.write_text(json.dumps({"x": "mapped"}))
    assert [r.task for r in read_pool(p, task_map=m).records] == ["mapped", "t"]
    assert load_task_map(m) == {"x": "mapped"}


def test_messages_format_and_csv(tmp_path):
    p = tmp_path / "sg.jsonl"
    write_jsonl(p, [{"id": "m1", "images": ["a.png"], "task": "t", "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
        {"role": "assistant", "content": "A"}]}])
    r = read_pool(p).records[0]
    assert r.image == "a.png" and r.conversations[0].text == "<image>Q?" and r.conversations[1].role == "assistant"
    c = tmp_path / "pool.csv"
    c.write_text("id,image,task\n1,a.png,t1\n2,b.png,t2\n")
    assert [(r.id, r.task, r.line) for r in read_pool(c).records] == [("1", "t1", 2), ("2", "t2", 3)]


def test_parquet_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["1", "2"], "image": ["a.png", None], "task": ["t", "t"]}), tmp_path / "p.parquet")
    pool = read_pool(tmp_path / "p.parquet")
    assert len(pool) == 1 and pool.text_only == 1
    root = tmp_path / "imgs"
    for t in ("cats", "dogs"):
        (root / t / "sub").mkdir(parents=True)
        (root / t / "sub" / "1.png").write_bytes(b"x")
    (root / "cats" / "notes.txt").write_text("x")
    pool = read_pool(root)
    assert [(r.id, r.task) for r in pool.records] == [("cats/sub/1.png", "cats"), ("dogs/sub/1.png", "dogs")]
    assert pool.image_path(pool.records[0]) == root / "cats/sub/1.png"


@pytest.mark.parametrize("lines,needle", [
    (['{"id": "a", "image": "x.png", "task": "t"}', '{"id": "a", "image": "y.png", "task": "t"}'], "line 2: duplicate id 'a'"),
    (['{"id": "a", "image": "x.png", "task": "t"}', '{oops'], "line 2: not valid JSON"),
    (['{"image": "x.png", "task": "t"}'], "line 1: missing 'id'"),
    (['{"id": "a", "image": "x.png"}'], "line 1: no task for id 'a'"),
    (['[1, 2]'], "line 1: expected a JSON object"),
    (['{"id": "a", "images": ["x.png", "y.png"], "task": "t"}'], "has 2 images"),
])
def test_bad_manifests(tmp_path, lines, needle):
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreselError) as e:
        read_pool(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_id_index_for_non_unique_ids(tmp_path):
    p = tmp_path / "pool.jsonl"
    p.write_text('{"id": "a", "image": "x.png", "task": "t"}\n{"id": "a", "image": "y.png", "task": "t"}\n')
    assert [r.id for r in read_pool(p, id_field="@index").records] == ["0", "1"]


def test_rules_and_id_lists(tmp_path):
    assert parse_task_rules(["./coco/=c", "vg=v"]) == [("coco/", "c"), ("vg", "v")]
    with pytest.raises(PreselError, match="PREFIX=TASK"):
        parse_task_rules(["coco"])
    y = tmp_path / "rules.yaml"
    y.write_text("gqa/: gqa\ncoco/: coco\n")
    assert parse_task_rules(y) == [("gqa/", "gqa"), ("coco/", "coco")]
    t = tmp_path / "ids.txt"
    t.write_text("a\n\nb\n")
    assert read_id_list(t) == ["a", "b"]


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "f").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as d:
        (d / "f").write_text("x")
    assert (out / "f").read_text() == "x"
    with pytest.raises(PreselError, match="not empty"), atomic_dir(out):
        pass
    with pytest.raises(PreselError, match="not written by presel"), atomic_dir(out, overwrite=True):
        pass  # a folder without presel's config.json is the user's: never replaced
    assert (out / "f").read_text() == "x"
    (out / "config.json").write_text('{"stage": "select", "environment": {}}')
    with atomic_dir(out, overwrite=True) as d:
        (d / "g").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["g"]


def test_features_npy_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.arange(12, dtype=np.float16).reshape(4, 3)
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\n")
    fm = load_features(tmp_path / "f.npy", tmp_path / "ids.txt")
    assert fm.dim == 3 and fm.index["c"] == 2
    np.testing.assert_array_equal(fm.rows(np.array([3, 0])), x[[3, 0]].astype(np.float32))
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(PreselError, match="2 ids but"):
        load_features(tmp_path / "f.npy", tmp_path / "short.txt")
    with pytest.raises(PreselError, match="--feature-ids"):
        load_features(tmp_path / "f.npy")
    pq.write_table(pa.table({"id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0, 4.0]]}), tmp_path / "f.parquet")
    fm = load_features(tmp_path / "f.parquet")
    np.testing.assert_array_equal(fm.rows(np.array([1])), [[3.0, 4.0]])


def test_common_pool_flags(tmp_path):
    import argparse

    from presel.commands import _common

    (tmp_path / "pool.jsonl").write_text('{"id": "a", "image": "x/1.png"}\n')
    p = argparse.ArgumentParser()
    _common.add_pool_arguments(p)
    args = p.parse_args(["--pool", str(tmp_path / "pool.jsonl")])
    with pytest.raises(PreselError, match="no task"):
        _common.load_pool(args)
    args = p.parse_args(["--pool", str(tmp_path / "pool.jsonl"), "--task-rule", "x/=tx"])
    assert _common.load_pool(args).records[0].task == "tx"


def test_cli_without_command_prints_help(capsys):
    assert main([]) == 2
    assert "presel" in capsys.readouterr().out


def test_atomic_outputs_get_usual_permissions(tmp_path):
    import os
    import stat

    from presel.io.atomic import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
