"""Hostile inputs: FIFOs, NUL bytes, non-UTF-8 names, deep JSON, wrong types; each one located error, no hang."""

import json
import os
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from presel.cli import main
from presel.errors import PreselError
from presel.features.images import ImageRejected, hash_file, load_rgb
from presel.io.manifest import read_id_list, read_json_file, read_pool
from presel.io.sources import content_hash, read_bytes


def _no_hang(fn, seconds=20):
    """Run fn in a thread; a FIFO read that blocks would make this fail instead of hanging the suite."""
    box = {}

    def go():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked (a FIFO was opened for reading)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _png(p, seed=0):
    p.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(a).save(p)


def test_fifo_image_is_rejected_not_read(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    for fn in (hash_file, content_hash, read_bytes, load_rgb):
        with pytest.raises(ImageRejected, match="FIFO"):
            _no_hang(lambda fn=fn: fn(str(fifo)))
    from presel.io.paths import ImagePathRefused, check_decodes

    with pytest.raises(ImagePathRefused, match="FIFO"):
        _no_hang(lambda: check_decodes(fifo))


def test_fifo_image_in_embed_goes_to_rejects(tiny_dinov2, tmp_path):
    from presel.features.extract import EmbedConfig, embed_pool

    _png(tmp_path / "imgs" / "a.png")
    os.mkfifo(tmp_path / "imgs" / "x.png")
    (tmp_path / "pool.jsonl").write_text('{"id": "a", "image": "imgs/a.png", "task": "t"}\n'
                                         '{"id": "x", "image": "imgs/x.png", "task": "t"}\n')
    pool = read_pool(tmp_path / "pool.jsonl")
    cfg = EmbedConfig(model=str(tiny_dinov2), batch_size=2, workers=0, progress=False)
    stats = _no_hang(lambda: embed_pool(pool, tmp_path / "feats", cfg), 120)
    assert stats["rejected_images"] == 1 and stats["embedded_images"] == 1
    rej = [json.loads(x) for x in (tmp_path / "feats" / "rejects.jsonl").read_text().splitlines()]
    assert rej[0]["image"] == "imgs/x.png" and "FIFO" in rej[0]["reason"]


@pytest.mark.parametrize("name", ["pool.jsonl", "pool.json", "pool.csv", "pool.parquet", "pool"])
def test_fifo_pool_is_refused(tmp_path, capsys, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    rc = _no_hang(lambda: main(["reference", "--pool", str(fifo), "--out", str(tmp_path / "ref")]))
    err = capsys.readouterr().err
    assert rc == 2 and f"--pool {fifo} is a FIFO (named pipe), not a regular file" in err
    with pytest.raises(PreselError, match="FIFO"):
        _no_hang(lambda: read_id_list(fifo))
    with pytest.raises(PreselError, match="FIFO"):
        _no_hang(lambda: read_json_file(fifo, missing="x"))


def test_json_nested_200000_deep(tmp_path, capsys):
    deep = '{"id": "a", "image": "a.png", "task": ' + "[" * 200_000 + "]" * 200_000 + "}\n"
    (tmp_path / "pool.jsonl").write_text('{"id": "b", "image": "b.png", "task": "t"}\n' + deep)
    with pytest.raises(PreselError, match=r"pool.jsonl line 2: JSON nested too deeply"):
        read_pool(tmp_path / "pool.jsonl")
    (tmp_path / "pool.json").write_text("[" + deep.strip() + "]")
    with pytest.raises(PreselError, match="nested too deeply"):
        read_pool(tmp_path / "pool.json")
    (tmp_path / "w.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(PreselError, match="nested too deeply"):
        read_json_file(tmp_path / "w.json", missing="x")
    assert main(["reference", "--pool", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "r")]) == 2
    assert "line 2" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_nul_byte_in_image_path(tmp_path, capsys):
    (tmp_path / "pool.jsonl").write_text('{"id": "a", "image": "a.png", "task": "t"}\n'
                                         '{"id": "b", "image": "b\\u0000.png", "task": "t"}\n')
    for cmd in (["reference"], ["embed", "--model", "dinov2-small"]):
        rc = main([*cmd, "--pool", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and "pool.jsonl line 2: 'image'" in err and "NUL byte" in err, err
        assert not (tmp_path / "o").exists()
    with pytest.raises(ImageRejected, match="NUL"):
        hash_file("a\0b.png")


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse non-UTF-8 names")
def test_non_utf8_file_name_in_image_folder(tmp_path, capsys):
    _png(tmp_path / "imgs" / "t" / "ok.png")
    bad = os.fsencode(str(tmp_path / "imgs" / "t")) + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        f.write((tmp_path / "imgs" / "t" / "ok.png").read_bytes())
    rc = main(["embed", "--pool", str(tmp_path / "imgs"), "--model", "dinov2-small", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert rc == 2 and "caf" in err and "not valid Unicode" in err and "rename" in err
    assert not (tmp_path / "f").exists()


def test_non_utf8_bytes_in_csv_line_12(tmp_path):
    lines = ["id,image,task"] + [f"r{i},img/{i}.png,t" for i in range(10)]
    data = ("\n".join(lines) + "\n").encode() + b"r10,img/\xff.png,t\n"
    (tmp_path / "pool.csv").write_bytes(data)
    with pytest.raises(PreselError, match=r"pool.csv line 12: not UTF-8"):
        read_pool(tmp_path / "pool.csv")


def test_csv_line_numbers_with_quoted_newlines(tmp_path):
    (tmp_path / "pool.csv").write_text('id,image,task\na,a.png,"t\nx"\nb,,t\n')
    pool = read_pool(tmp_path / "pool.csv")
    assert [r.line for r in pool.records] == [3] and pool.records[0].task == "t\nx"


@pytest.mark.parametrize("rec, needle", [
    ({"id": "a", "image": "a.png", "task": ["a", "b"]}, "'task' must be a string or a number, got list"),
    ({"id": "a", "image": "a.png", "task": {"x": 1}}, "'task' must be a string or a number, got dict"),
    ({"id": ["a"], "image": "a.png", "task": "t"}, "'id' must be a string or a number, got list"),
    ({"id": {"a": 1}, "image": "a.png", "task": "t"}, "'id' must be a string or a number, got dict"),
    ({"id": True, "image": "a.png", "task": "t"}, "'id' must be a string or a number, got bool"),
    ({"id": "\udcff", "image": "a.png", "task": "t"}, "not valid Unicode"),
    ({"id": float("inf"), "image": "a.png", "task": "t"}, "'id' is inf (NaN or infinite"),
])
def test_task_or_id_of_the_wrong_type(tmp_path, rec, needle):
    (tmp_path / "pool.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(PreselError, match=r"pool.jsonl line 1: ") as e:
        read_pool(tmp_path / "pool.jsonl")
    assert needle in str(e.value)


def test_id_list_with_object_ids(tmp_path):
    (tmp_path / "ref.jsonl").write_text('{"id": "a"}\n{"id": {"x": 1}}\n')
    with pytest.raises(PreselError, match=r"ref.jsonl line 2: 'id' must be a string or a number"):
        read_id_list(tmp_path / "ref.jsonl")


def test_fifo_features_parquet_and_task_map(tmp_path, capsys):
    from presel.io.features import load_features
    from presel.io.manifest import load_task_map, read_parquet

    for name in ("f.npy", "f.parquet", "map.json", "map.csv"):
        os.mkfifo(tmp_path / name)
    with pytest.raises(PreselError, match="FIFO"):
        _no_hang(lambda: load_features(tmp_path / "f.npy", tmp_path / "ids.txt"))
    with pytest.raises(PreselError, match="FIFO"):
        _no_hang(lambda: read_parquet(tmp_path / "f.parquet"))
    for name in ("map.json", "map.csv"):
        with pytest.raises(PreselError, match="FIFO"):
            _no_hang(lambda name=name: load_task_map(tmp_path / name))


def test_task_map_values_of_the_wrong_type(tmp_path):
    from presel.io.manifest import load_task_map

    (tmp_path / "map.json").write_text('{"a": ["x", "y"]}')
    with pytest.raises(PreselError, match=r"'task' must be a string or a number, got list"):
        load_task_map(tmp_path / "map.json")


def test_truncated_npy_features(tmp_path):
    from presel.io.features import load_features

    np.save(tmp_path / "f.npy", np.ones((10, 4), np.float32))
    (tmp_path / "f.npy").write_bytes((tmp_path / "f.npy").read_bytes()[:90])
    (tmp_path / "ids.txt").write_text("".join(f"i{k}\n" for k in range(10)))
    with pytest.raises(PreselError, match="not a readable .npy array"):
        load_features(tmp_path / "f.npy", tmp_path / "ids.txt")


def test_run_out_may_hold_its_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("out: run\npool: {path: missing.jsonl}\n")
    assert main(["run", "config.yaml", "--out", ".", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "would delete or overwrite" not in err and "missing.jsonl" in err
