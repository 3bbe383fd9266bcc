"""IRS scoring: outputs, rejects, hand-computed losses, batched == unbatched, resume, settings, Ray, CLI."""

import json
import math

import pytest
from imp_data import make_annotated

from presel.errors import PreselError
from presel.importance.scoring import ScoreConfig, score_to_dir

torch = pytest.importorskip("torch")
pq = pytest.importorskip("pyarrow.parquet")


def _table(d):
    return pq.read_table(d / "irs.parquet").to_pydict()


def _cfg(model, **kw):
    return ScoreConfig(model=str(model), **{"batch_size": 4, "dtype": "fp32", "device": "cpu", **kw})


@pytest.fixture(scope="module")
def scored(tiny_llava, tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    data = make_annotated(root / "data")
    summary = score_to_dir(data, root / "irs", _cfg(tiny_llava), progress=False)
    return root / "irs", data, summary


def test_outputs_and_rejects(scored):
    out, _, summary = scored
    t = _table(out)
    assert list(t) == ["id", "task", "loss_q", "loss_noq", "irs", "n_response_tokens"]
    assert t["id"] == [f"c{i}" for i in range(8)]  # input order
    assert t["task"] == ["colour", "shape"] * 4
    for q, nq, irs, n in zip(t["loss_q"], t["loss_noq"], t["irs"], t["n_response_tokens"]):
        assert math.isfinite(q) and math.isfinite(nq) and nq > 0 and n > 0
        assert irs == pytest.approx(q / nq, rel=1e-12)
    rej = {r["id"]: r for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert set(rej) == {"missing", "broken", "empty", "question-only", "blank-reply"}
    assert rej["missing"]["reason"].startswith("unreadable image: missing")
    assert rej["broken"]["reason"].startswith("unreadable image:")
    assert rej["empty"]["reason"] == "empty conversation"
    assert rej["question-only"]["reason"].startswith("no response tokens")
    assert rej["blank-reply"]["reason"].startswith("no response tokens")
    assert all(r["task"] == "colour" and r["line"] > 8 for r in rej.values())
    assert summary["scored"] == 8 and summary["rejected"] == 5 and summary["samples"] == 13
    assert summary["tasks"]["shape"]["rejected"] == 0 and summary["tasks"]["colour"]["rejected"] == 5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stage"] == "score" and cfg["config"]["batch_size"] == 4
    # multi-turn samples count the tokens of both replies
    n = dict(zip(t["id"], t["n_response_tokens"]))
    assert n["c2"] > n["c1"] and n["c5"] > n["c4"]


def test_losses_equal_a_manual_computation(scored, tiny_loaded):
    """loss_q / loss_noq equal an unbatched forward + hand-written masked cross-entropy."""
    from PIL import Image

    from presel.io.manifest import read_pool
    from presel.vlm.render import encode_conversation

    out, data, _ = scored
    model, proc = tiny_loaded
    pool = read_pool(data)
    t = _table(out)
    got = {i: (q, nq, n) for i, q, nq, n in zip(t["id"], t["loss_q"], t["loss_noq"], t["n_response_tokens"])}
    for rec in pool.records[:4]:
        image = Image.open(pool.image_path(rec)).convert("RGB")
        means = []
        for drop in (False, True):
            e = encode_conversation(proc, image, rec.conversations, drop_question=drop)
            with torch.no_grad():
                logits = model(input_ids=e.input_ids[None], **e.extras).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            pos = [p for p in range(len(e.labels) - 1) if e.labels[p + 1] != -100]
            means.append(-sum(float(logp[p, e.labels[p + 1]]) for p in pos) / len(pos))
            if not drop:
                assert got[rec.id][2] == len(pos)
        assert got[rec.id][0] == pytest.approx(means[0], abs=1e-4)
        assert got[rec.id][1] == pytest.approx(means[1], abs=1e-4)


def test_batched_equals_unbatched(scored, tiny_llava, tmp_path):
    out, data, _ = scored
    score_to_dir(data, tmp_path / "b1", _cfg(tiny_llava, batch_size=1, prefetch=False), progress=False)
    a, b = _table(out), _table(tmp_path / "b1")
    assert a["id"] == b["id"] and a["n_response_tokens"] == b["n_response_tokens"]
    for col in ("loss_q", "loss_noq", "irs"):
        assert max(abs(x - y) for x, y in zip(a[col], b[col])) < 1e-4, col
    assert (out / "rejected.jsonl").read_text() == (tmp_path / "b1" / "rejected.jsonl").read_text()


def test_resume_after_a_crash(scored, tiny_llava, tmp_path):
    out, data, _ = scored

    class Killed(Exception):
        pass

    def kill(n_done):
        if n_done >= 8:
            raise Killed

    run = tmp_path / "irs"
    with pytest.raises(Killed):
        score_to_dir(data, run, _cfg(tiny_llava), progress=False, on_batch=kill)
    assert not (run / "irs.parquet").exists()
    lines = (run / "shards" / "part-00000.jsonl").read_text().splitlines()
    assert len(lines) == 8
    with open(run / "shards" / "part-00000.jsonl", "a") as f:  # a torn line from the crash
        f.write('{"id": "c9", "loss')
    s = score_to_dir(data, run, _cfg(tiny_llava), progress=False)
    assert s["scored_this_run"] == 5 and s["scored"] == 8 and s["rejected"] == 5
    a, b = _table(out), _table(run)
    assert a["id"] == b["id"]
    for col in ("loss_q", "loss_noq", "irs"):
        assert a[col] == pytest.approx(b[col], abs=1e-5)
    # a finished output: a rerun scores nothing and rewrites the same files
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    s = score_to_dir(data, run, _cfg(tiny_llava), progress=False)
    assert s["scored_this_run"] == 0
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_other_settings_need_overwrite(scored, tiny_llava, tmp_path):
    out, data, _ = scored
    run = tmp_path / "irs"
    score_to_dir(data, run, _cfg(tiny_llava, max_length=200), progress=False)
    with pytest.raises(PreselError, match="other settings .*max_length"):
        score_to_dir(data, run, _cfg(tiny_llava), progress=False)
    s = score_to_dir(data, run, _cfg(tiny_llava), progress=False, overwrite=True)
    assert s["scored_this_run"] == 13
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("keep")
    with pytest.raises(PreselError, match="not a presel score output"):
        score_to_dir(data, tmp_path / "other", _cfg(tiny_llava), progress=False)
    assert (tmp_path / "other" / "x.txt").read_text() == "keep"


def test_truncation_rejects_samples_without_response_tokens(scored, tiny_llava, tmp_path):
    _, data, _ = scored
    s = score_to_dir(data, tmp_path / "irs", _cfg(tiny_llava, max_length=40), progress=False)
    rej = [json.loads(x) for x in (tmp_path / "irs" / "rejected.jsonl").read_text().splitlines()]
    assert s["scored"] == 0 and all("max_length=40" in r["reason"] or r["id"] in
                                    {"missing", "broken", "empty", "question-only", "blank-reply"} for r in rej)


@pytest.mark.parametrize("kw, msg", [
    ({"batch_size": 0}, "batch_size=0 must be"), ({"dtype": "fp8"}, "dtype='fp8'"), ({"device": "tpu"}, "device='tpu'"),
    ({"max_length": 1}, "max_length=1"), ({"executor": "dask"}, "executor='dask'"), ({"workers": 0}, "workers=0"),
    ({"render_workers": -1}, "render_workers=-1"),
])
def test_bad_config(kw, msg):
    with pytest.raises(PreselError, match=msg):
        ScoreConfig(model="x", **kw)


def test_render_workers_equal_in_process(scored, tiny_llava, tmp_path):
    out, data, _ = scored
    score_to_dir(data, tmp_path / "w", _cfg(tiny_llava, render_workers=2), progress=False)
    a, b = _table(out), _table(tmp_path / "w")
    assert a["id"] == b["id"]
    for col in ("loss_q", "loss_noq", "irs"):
        assert a[col] == pytest.approx(b[col], abs=1e-6)
    assert (out / "rejected.jsonl").read_text() == (tmp_path / "w" / "rejected.jsonl").read_text()


def test_ray_executor_equals_local(scored, tiny_llava, tmp_path):
    ray = pytest.importorskip("ray")
    out, data, _ = scored
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        s = score_to_dir(data, tmp_path / "ray", _cfg(tiny_llava, executor="ray", workers=2), progress=False)
    finally:
        ray.shutdown()
    assert s["scored"] == 8 and s["rejected"] == 5
    a, b = _table(out), _table(tmp_path / "ray")
    assert a["id"] == b["id"]
    for col in ("loss_q", "loss_noq", "irs"):
        assert a[col] == pytest.approx(b[col], abs=1e-6)


def test_cli_score_then_weights(tiny_llava, tmp_path, capsys):
    from presel.cli import main
    from presel.selection.weights_io import normalise_task_weights, read_weights_file

    data = make_annotated(tmp_path / "data")
    rc = main(["score", "--data", str(data), "--model", str(tiny_llava), "--out", str(tmp_path / "irs"),
               "--batch-size", "3", "--dtype", "fp32", "--device", "cpu", "--quiet"])
    assert rc == 0
    assert "scored 8 of 13 samples (5 rejected" in capsys.readouterr().out
    assert main(["weights", "--irs", str(tmp_path / "irs"), "--out", str(tmp_path / "w.json")]) == 0
    w = normalise_task_weights(read_weights_file(tmp_path / "w.json"), ["colour", "shape"])
    assert sum(w.values()) == pytest.approx(1.0)
    # bad input: exit code 2 with a message naming the record
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "image": "a.png", "conversations": []}]))
    assert main(["score", "--data", str(bad), "--model", str(tiny_llava), "--out", str(tmp_path / "o")]) == 2
    assert "no task for id 'x'" in capsys.readouterr().err
