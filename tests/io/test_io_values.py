"""Values that used to pass silently or crash: IRS extremes, NaN features in dedup, strict YAML."""

import json

import numpy as np
import pytest

from presel.cli import main
from presel.errors import PreselError
from presel.importance.weights import compute_weights
from presel.io.yamlfile import read_yaml


def test_weights_on_huge_irs(tmp_path, capsys):
    w = compute_weights({"task": ["a", "a", "b"], "irs": [1e308, 1e308, 0.5]})  # the mean does not overflow
    assert w["a"]["score"] == 1e308 and w["a"]["weight"] == 0.0 and w["b"]["weight"] == 1.0
    cols = {"task": ["a", "a", "b"], "irs": [1.7e308, 1.7e308, 0.5]}  # score / tau overflows
    with pytest.raises(PreselError, match="too large to weight"):
        compute_weights(cols)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), tmp_path / "irs.parquet")
    assert main(["weights", "--irs", str(tmp_path / "irs.parquet"), "--out", str(tmp_path / "w.json")]) == 2
    assert "too large to weight" in capsys.readouterr().err and not (tmp_path / "w.json").exists()


def test_weights_on_negative_irs():
    with pytest.raises(PreselError, match=r"task 'b' has a negative IRS \(-0.5\)"):
        compute_weights({"task": ["a", "b"], "irs": [0.5, -0.5]})


def test_weights_broken_rejected_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"task": ["a"], "irs": [0.5]}), tmp_path / "irs.parquet")
    (tmp_path / "rejected.jsonl").write_text('{"task": "a"}\n{broken\n')
    with pytest.raises(PreselError, match="rejected.jsonl line 2: not valid JSON"):
        compute_weights(tmp_path)


def test_dedup_refuses_nan_features(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    x[3, 1] = np.nan
    np.save(tmp_path / "f.npy", x)
    (tmp_path / "ids.txt").write_text("".join(f"i{k}\n" for k in range(6)))
    rc = main(["dedup", "--features", str(tmp_path / "f.npy"), "--feature-ids", str(tmp_path / "ids.txt"),
               "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "features of 'i3' contain NaN or inf" in err and not (tmp_path / "d").exists()


def test_yaml_duplicate_key_non_utf8_folder_fifo(tmp_path):
    import os

    (tmp_path / "dup.yaml").write_text("out: run\nselect:\n  seed: 1\n  seed: 2\n")
    with pytest.raises(PreselError, match=r"dup.yaml line 4: not valid YAML \(duplicate key 'seed' \(first on line 3\)\)"):
        read_yaml(tmp_path / "dup.yaml")
    (tmp_path / "bad.yaml").write_bytes(b"out: run\npool:\n  path: p\xff.jsonl\n")
    with pytest.raises(PreselError, match=r"bad.yaml line 3: not UTF-8 text \(byte 0xff at column 10\)"):
        read_yaml(tmp_path / "bad.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(PreselError, match="is a folder, not a config file"):
        read_yaml(tmp_path / "dir.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(PreselError, match="FIFO"):
        read_yaml(tmp_path / "fifo.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(PreselError, match="must be a YAML mapping"):
        read_yaml(tmp_path / "list.yaml")


def test_run_config_errors_through_the_cli(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_bytes(b"out: run\npool: {path: \"p\xff.jsonl\"}\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "dup.yaml").write_text("out: run\nout: other\npool: {path: p.jsonl}\n")
    for name, needle in (("bad.yaml", "line 2: not UTF-8"), ("cfg", "is a folder"), ("dup.yaml", "duplicate key 'out'")):
        assert main(["run", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def _bomb(levels):
    """A tiny YAML whose reference.seed expands into 9 ** levels strings through aliases."""
    parts = ['&a ["xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx","xxxxxxxx","x"]']
    names = "abcdefghij"
    for i in range(1, levels):
        parts.append(f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 9) + "]")
    return "out: run\npool: {path: pool.jsonl}\nreference: {seed: [" + ", ".join(parts) + "]}\n"


def test_yaml_alias_bomb_is_refused_fast_and_messages_are_cut(tmp_path, capsys):
    (tmp_path / "pool.jsonl").write_text('{"id": "a", "image": "a.png", "task": "t"}\n')
    (tmp_path / "bomb.yaml").write_text(_bomb(8))
    assert len((tmp_path / "bomb.yaml").read_bytes()) < 600
    assert main(["run", str(tmp_path / "bomb.yaml")]) == 2
    err = capsys.readouterr().err
    assert "aliases (*name) expand into more than 1,000,000 values" in err and len(err) < 1000
    # a smaller expansion passes the reader; the setting's error is still cut to a bounded length
    (tmp_path / "small.yaml").write_text(_bomb(6))
    assert main(["run", str(tmp_path / "small.yaml")]) == 2
    err = capsys.readouterr().err
    assert "seed=" in err and "must be an integer" in err and len(err) < 1000, len(err)


def test_cut_and_short():
    from presel.io.text import cut, short

    assert cut("x" * 10) == "x" * 10
    assert cut("x" * 1000).endswith("... (700 more characters)")
    shared = ["y" * 50] * 9
    for _ in range(8):
        shared = [shared] * 9
    assert len(short(shared)) < 400


def test_report_section_unknown_key_lists_known_keys(tmp_path, capsys):
    (tmp_path / "pool.jsonl").write_text('{"id": "a", "image": "a.png", "task": "t"}\n')
    (tmp_path / "c.yaml").write_text(json.dumps({"out": "run", "pool": {"path": "pool.jsonl"},
                                                 "report": {"colour": "red"}}))
    assert main(["run", str(tmp_path / "c.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown setting(s) colour in 'report'" in err
    assert "known: \n" not in err and "'report' takes no settings: write `report: {}`" in err, err


@pytest.mark.parametrize("text, needle", [
    ("gqa/: [1, 2]\n", "rule 'gqa/': 'task' must be a string or a number, got list"),
    ("- {prefix: gqa/, task: {x: 1}}\n", "rule 1: 'task' must be a string or a number, got dict"),
    ("- [a]\n", "rule 1: 'rule' must be a string or a number, got list"),
    ("a: 1\na: 2\n", "duplicate key 'a'"),
])
def test_task_rules_files_of_wrong_types(tmp_path, text, needle):
    from presel.io.manifest import parse_task_rules

    (tmp_path / "rules.yaml").write_text(text)
    with pytest.raises(PreselError, match="rules.yaml") as e:
        parse_task_rules(str(tmp_path / "rules.yaml"))
    assert needle in str(e.value)


def test_templates_file_strict(tmp_path):
    from presel.generate.templates import load_templates

    (tmp_path / "t.yaml").write_bytes(b"templates:\n  - name: x\n    prompt: \xff\n")
    with pytest.raises(PreselError, match=r"t.yaml line 3: not UTF-8 text"):
        load_templates(tmp_path / "t.yaml")
    (tmp_path / "t2.yaml").write_text("default: vqa\ndefault: ocr\n")
    with pytest.raises(PreselError, match="duplicate key 'default'"):
        load_templates(tmp_path / "t2.yaml")
