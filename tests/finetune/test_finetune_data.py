import json

import pytest
from ft_data import make_train_set

from presel.errors import PreselError
from presel.finetune.data import StepPlan, load_train_data
from presel.finetune.train import FinetuneConfig


def test_bad_records_are_skipped_and_listed(train_set):
    d = load_train_data(train_set)
    assert [r.id for r in d.samples] == [f"c{i}" for i in range(6)]
    reasons = {r["id"]: r["reason"] for r in d.skipped}
    assert set(reasons) == {"missing", "broken", "question-only"}
    assert reasons["missing"].startswith("image missing")
    assert reasons["broken"].split(":")[0] in ("image corrupt", "image truncated", "image not an image")
    assert reasons["question-only"] == "no assistant turn"
    assert all(r["line"] >= 7 for r in d.skipped)


def test_no_usable_sample_is_an_error(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([
        {"id": "a", "image": "gone.png", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"id": "b", "image": "gone2.png", "conversations": [{"from": "human", "value": "hi"}]},
    ]))
    with pytest.raises(PreselError, match="no usable training sample"):
        load_train_data(tmp_path / "x.json")


def test_jsonl_input_with_task_field(tmp_path):
    p = make_train_set(tmp_path, n=3, bad=False)
    rows = json.loads(p.read_text())
    for r in rows:
        r["task"] = "colours"
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_train_data(tmp_path / "t.jsonl", default_task=None)
    assert len(d) == 3 and d.skipped == []


@pytest.mark.parametrize("n,bs,ga,ws", [(10, 3, 1, 1), (10, 2, 2, 1), (7, 2, 1, 2), (5, 1, 3, 2), (4, 4, 1, 1)])
def test_step_plan_covers_each_sample_once_per_epoch(n, bs, ga, ws):
    plan = StepPlan(n, bs, ga, ws, seed=3)
    for epoch in range(2):
        seen = []
        for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch):
            per_rank = [plan.micro_batches(step, r) for r in range(ws)]
            if ws > 1:  # every rank runs the same number of micro-batches (no DDP hang)
                assert all(len(m) == ga for m in per_rank)
            for mbs in per_rank:
                for mb in mbs:
                    assert 1 <= len(mb) <= bs
                    seen += [i for i, masked in mb if not masked]
        assert sorted(seen) == list(range(n))
    assert plan.epoch_order(0) == StepPlan(n, bs, ga, ws, seed=3).epoch_order(0)
    assert plan.epoch_order(0) != plan.epoch_order(1) or n < 3
    assert StepPlan(n, bs, ga, ws, seed=4).epoch_order(0) != plan.epoch_order(0) or n < 4


@pytest.mark.parametrize("kw,msg", [
    ({"lora_r": 0}, "lora_r=0 must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"lr": 0}, "lr=0"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"dtype": "fp16"}, "fp16 training needs loss scaling"),
    ({"warmup_ratio": 1.5}, "warmup_ratio"),
    ({"scheduler": "step"}, "scheduler"),
    ({"device": "gpu"}, "device='gpu'"),
    ({"max_steps": 0}, "max_steps"),
    ({"target_modules": ()}, "target_modules"),
])
def test_config_validation(kw, msg):
    with pytest.raises(PreselError, match=msg):
        FinetuneConfig(**kw)


def test_config_defaults_are_the_llava_lora_recipe():
    c = FinetuneConfig(target_modules="q_proj, v_proj")
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lr, c.projector_lr) == (128, 256, 0.05, 2e-4, 2e-5)
    assert (c.epochs, c.warmup_ratio, c.weight_decay, c.scheduler, c.full, c.freeze_vision) == (1, 0.03, 0, "cosine", False, True)
    assert c.target_modules == ("q_proj", "v_proj")
