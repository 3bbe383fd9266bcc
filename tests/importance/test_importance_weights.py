"""Task weights: hand-computed values, M = 1, equal scores, tau, bad inputs, the file select reads."""

import json
import math

import pytest

from presel.errors import PreselError
from presel.importance.weights import compute_weights, softmax_weights, write_weights


def _cols(rows):
    return {"id": [f"s{i}" for i in range(len(rows))], "task": [t for t, _ in rows], "irs": [v for _, v in rows]}


def test_hand_computed_values():
    # scores: a = (0.5 + 0.7) / 2 = 0.6, b = 0.9, c = 1.2; M = 3, tau = 1/sqrt(3)
    w = compute_weights(_cols([("a", 0.5), ("b", 0.9), ("a", 0.7), ("c", 1.2)]))
    assert list(w) == ["a", "b", "c"]
    assert [w[t]["n"] for t in w] == [2, 1, 1]
    assert [w[t]["score"] for t in w] == pytest.approx([0.6, 0.9, 1.2])
    s3 = math.sqrt(3)
    e = [math.exp(-0.6 * s3), math.exp(-0.9 * s3), math.exp(-1.2 * s3)]
    assert [w[t]["weight"] for t in w] == pytest.approx([x / sum(e) for x in e], rel=1e-12)
    # by hand: exp(-1.03923) = 0.35371, exp(-1.55885) = 0.21040, exp(-2.07846) = 0.12510; 0.35371 / 0.68921
    assert w["a"]["weight"] == pytest.approx(0.5132, abs=1e-4)
    # explicit tau = 0.5: weights proportional to exp(-2 s)
    w = compute_weights(_cols([("a", 0.5), ("b", 0.9), ("a", 0.7), ("c", 1.2)]), tau=0.5)
    e = [math.exp(-1.2), math.exp(-1.8), math.exp(-2.4)]
    assert [w[t]["weight"] for t in w] == pytest.approx([x / sum(e) for x in e], rel=1e-12)


def test_single_task_and_equal_scores():
    w = compute_weights(_cols([("only", 0.8), ("only", 1.1)]))
    assert w == {"only": {"score": pytest.approx(0.95), "weight": 1.0, "n": 2}}
    w = compute_weights(_cols([("a", 0.9), ("b", 0.9), ("c", 0.9), ("d", 0.9)]))
    assert [v["weight"] for v in w.values()] == pytest.approx([0.25] * 4, rel=1e-12)


def test_lower_irs_gets_more_weight_and_is_stable_for_extreme_scores():
    w = softmax_weights({"informative": 0.2, "predictable": 1.5})
    assert w["informative"] > w["predictable"]
    w = softmax_weights({"a": 1e6, "b": 1e6 + 1}, tau=1e-3)
    assert all(math.isfinite(v) for v in w.values()) and sum(w.values()) == pytest.approx(1.0)
    assert w["a"] == pytest.approx(1.0)


@pytest.mark.parametrize("tau", [0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
    with pytest.raises(PreselError, match="tau=.* must be a number > 0"):
        softmax_weights({"a": 1.0}, tau=tau)


def test_bad_tables(tmp_path):
    with pytest.raises(PreselError, match="non-finite IRS"):
        compute_weights(_cols([("a", float("nan"))]))
    with pytest.raises(PreselError, match="missing column 'irs'"):
        compute_weights({"task": ["a"]})
    with pytest.raises(PreselError, match="no IRS table"):
        compute_weights(tmp_path)
    # a task whose samples were all rejected has no score: named in the error
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(_cols([("a", 0.5)])), tmp_path / "irs.parquet")
    (tmp_path / "rejected.jsonl").write_text(json.dumps({"id": "x", "task": "b", "reason": "empty conversation"}) + "\n")
    with pytest.raises(PreselError, match="task 'b' has no scored reference sample"):
        compute_weights(tmp_path)
    (tmp_path / "rejected.jsonl").write_text(json.dumps({"id": "x", "task": "a", "reason": "empty conversation"}) + "\n")
    assert compute_weights(tmp_path)["a"]["n"] == 1


def test_written_file_is_what_select_reads(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from presel.cli import main
    from presel.selection.weights_io import normalise_task_weights, read_weights_file

    irs = tmp_path / "irs"
    irs.mkdir()
    pq.write_table(pa.table(_cols([("a", 0.5), ("b", 0.9), ("a", 0.7), ("c", 1.2)])), irs / "irs.parquet")
    assert main(["weights", "--irs", str(irs), "--out", str(tmp_path / "w.json")]) == 0
    data = json.loads((tmp_path / "w.json").read_text())
    assert set(data) == {"a", "b", "c"} and set(data["a"]) == {"score", "weight", "n"}
    assert data == json.loads(json.dumps(compute_weights(irs)))
    norm = normalise_task_weights(read_weights_file(tmp_path / "w.json"), ["c", "b", "a"])
    assert norm["a"] == pytest.approx(data["a"]["weight"])
    assert main(["weights", "--irs", str(irs), "--out", str(tmp_path / "w2.json"), "--tau", "0.5"]) == 0
    assert json.loads((tmp_path / "w2.json").read_text())["a"]["weight"] != data["a"]["weight"]
    assert main(["weights", "--irs", str(irs), "--out", str(tmp_path / "w3.json"), "--tau", "warm"]) == 2
    assert "tau='warm' must be 'auto'" in capsys.readouterr().err  # the flags' common error form (config_from_args)
    write_weights(tmp_path / "w4.json", compute_weights(irs))
    assert (tmp_path / "w4.json").read_bytes() == (tmp_path / "w.json").read_bytes()
