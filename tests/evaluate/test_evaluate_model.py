import json

import pytest
from PIL import Image

from presel.errors import PreselError
from presel.evaluate import EvalConfig, evaluate_model, normalize_answer, relative_table, summarize


def test_normalize_answer():
    assert normalize_answer("  The Cat. ") == "cat"
    assert normalize_answer('"B"') == "b"
    assert normalize_answer("A handwritten digit 7.") == "handwritten digit 7"
    assert normalize_answer("yes!") == normalize_answer("Yes")
    assert normalize_answer("12") != normalize_answer("1 2")


def test_summarize_and_relative_table():
    preds = [{"task": "a", "correct": True}, {"task": "a", "correct": False}, {"task": "b", "correct": True}]
    s = summarize(preds)
    assert s["per_task"] == {"a": {"n": 2, "accuracy": 0.5}, "b": {"n": 1, "accuracy": 1.0}}
    with_nll = summarize([dict(p, answer_nll=v) for p, v in zip(preds, (1.0, 3.0, 0.5))])
    assert with_nll["per_task"]["a"]["answer_nll"] == 2.0 and with_nll["mean_answer_nll"] == pytest.approx(1.25)
    assert s["mean_accuracy"] == pytest.approx(0.75)
    full = summarize([{"task": "a", "correct": True}, {"task": "b", "correct": True}])
    table = relative_table({"presel": s, "full": full}, reference="full")
    # relative score = mean over tasks of accuracy / full accuracy = (0.5 + 1.0) / 2
    assert table.splitlines()[-1].split()[-2:] == ["75.0%", "100.0%"]


def test_config_validation():
    with pytest.raises(PreselError, match="batch_size=0"):
        EvalConfig(batch_size=0)


def test_evaluate_tiny_llava(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESEL_CACHE", str(tmp_path / "cache"))
    from presel.cache import offline_model

    model = offline_model("tiny-llava")
    recs = []
    for i, task in enumerate(["t1", "t1", "t2"]):
        Image.new("RGB", (32, 32), (i * 60, 10, 10)).save(tmp_path / f"{i}.png")
        recs.append({"id": str(i), "image": f"{i}.png", "task": task, "conversations": [
            {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]})
    (tmp_path / "heldout.json").write_text(json.dumps(recs))
    res = evaluate_model(model, tmp_path / "heldout.json", EvalConfig(batch_size=2, max_new_tokens=3), progress=False)
    assert {t: r["n"] for t, r in res["per_task"].items()} == {"t1": 2, "t2": 1}
    assert len(res["predictions"]) == 3
    for p in res["predictions"]:
        assert isinstance(p["prediction"], str)
        assert p["correct"] == (normalize_answer(p["prediction"]) == "red")
        assert p["answer_nll"] > 0
    # answer NLL: per task the mean of its questions, overall the mean over tasks
    nll = [p["answer_nll"] for p in res["predictions"]]
    assert res["per_task"]["t1"]["answer_nll"] == pytest.approx((nll[0] + nll[1]) / 2)
    assert res["mean_answer_nll"] == pytest.approx(((nll[0] + nll[1]) / 2 + nll[2]) / 2)
    # the same answer scored alone gives the same NLL as inside a padded batch
    one = evaluate_model(model, tmp_path / "heldout.json", EvalConfig(batch_size=1, max_new_tokens=1), progress=False)
    assert [p["answer_nll"] for p in one["predictions"]] == pytest.approx(nll, rel=1e-4)
    off = evaluate_model(model, tmp_path / "heldout.json", EvalConfig(batch_size=2, max_new_tokens=1, answer_nll=False),
                         progress=False)
    assert "mean_answer_nll" not in off and "answer_nll" not in off["per_task"]["t1"]


def test_heldout_without_answer_is_an_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "h.json").write_text(json.dumps([{"id": "1", "image": "a.png", "task": "t",
                                                  "conversations": [{"from": "human", "value": "Q?"}]}]))
    with pytest.raises(PreselError, match="id '1' needs a user question and an assistant answer"):
        evaluate_model("unused", tmp_path / "h.json")


def _heldout(tmp_path, n=7):
    recs = []
    answers = ["red", "a blue box", "7", "yes", "The green one.", "no", "two"]
    for i in range(n):
        Image.new("RGB", (32 + i, 30), (i * 30, 200 - i * 20, 10)).save(tmp_path / f"{i}.png")
        recs.append({"id": str(i), "image": f"{i}.png", "task": f"t{i % 3}", "conversations": [
            {"from": "human", "value": "<image>\n" + ("What color?" if i % 2 else "Describe the picture in a few words.")},
            {"from": "gpt", "value": answers[i % len(answers)]}]})
    (tmp_path / "heldout.json").write_text(json.dumps(recs))
    return tmp_path / "heldout.json"


def test_cached_image_features_give_the_same_answers_and_losses(tmp_path, monkeypatch):
    """One forward pass per batch on cached image features == answer NLL by the scorer + generate()."""
    monkeypatch.setenv("PRESEL_CACHE", str(tmp_path / "cache"))
    from presel.cache import offline_model

    model = offline_model("tiny-llava")
    data = _heldout(tmp_path)
    cfg = EvalConfig(batch_size=3, max_new_tokens=5, answer_slack=None)
    plain = evaluate_model(model, data, cfg, progress=False)
    fast = evaluate_model(model, data, cfg, progress=False, image_features=tmp_path / "feats")
    assert len(list((tmp_path / "feats").glob("*/*.npy"))) == 7
    assert [p["id"] for p in fast["predictions"]] == [p["id"] for p in plain["predictions"]]
    assert [p["prediction"] for p in fast["predictions"]] == [p["prediction"] for p in plain["predictions"]]
    assert [p["answer_nll"] for p in fast["predictions"]] == pytest.approx(
        [p["answer_nll"] for p in plain["predictions"]], rel=1e-4)
    # batch composition does not change a question's figures
    one = evaluate_model(model, data, EvalConfig(batch_size=1, max_new_tokens=5, answer_slack=None),
                         progress=False, image_features=tmp_path / "feats")
    assert [p["answer_nll"] for p in one["predictions"]] == pytest.approx(
        [p["answer_nll"] for p in fast["predictions"]], rel=1e-4)
    assert [p["prediction"] for p in one["predictions"]] == [p["prediction"] for p in fast["predictions"]]


def test_generation_is_capped_at_the_answer_length(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESEL_CACHE", str(tmp_path / "cache"))
    from presel.cache import offline_model

    model = offline_model("tiny-llava")
    data = _heldout(tmp_path)
    for feats in (None, tmp_path / "feats"):
        long = evaluate_model(model, data, EvalConfig(batch_size=4, max_new_tokens=12, answer_slack=None),
                              progress=False, image_features=feats)
        short = evaluate_model(model, data, EvalConfig(batch_size=4, max_new_tokens=12, answer_slack=0),
                               progress=False, image_features=feats)
        pairs = [(a["prediction"], b["prediction"]) for a, b in zip(long["predictions"], short["predictions"])]
        assert all(full.startswith(cut) for full, cut in pairs)  # the same greedy answer, cut short
        assert any(len(cut) < len(full) for full, cut in pairs)
