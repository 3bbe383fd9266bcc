import json
import math

import pytest
from ft_data import make_train_set

from presel.errors import PreselError
from presel.finetune.train import FinetuneConfig, finetune

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft internals

FAST = dict(lora_r=8, lora_alpha=16, lr=5e-3, projector_lr=1e-3, batch_size=3, save_every_steps=0, log_every=0,
            max_length=None, warmup_ratio=0.0)


def _cfg(**kw):
    return FinetuneConfig(**{**FAST, **kw})


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def _weights(out):
    from safetensors.torch import load_file

    return {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _encoded_batch(model_dir, data_path):
    """A padded batch of the training samples, rendered by presel.vlm.render (as training does)."""
    from presel.finetune.data import ConversationDataset, load_train_data
    from presel.finetune.train import _pad_token_id
    from presel.vlm.load import load_vlm
    from presel.vlm.render import collate

    _, processor = load_vlm(model_dir, dtype="fp32", device="cpu")
    ds = ConversationDataset(load_train_data(data_path), processor)
    return collate([ds[(i, False)] for i in range(3)], _pad_token_id(processor), padding_side="right")


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **batch["extras"]).logits


@pytest.fixture(scope="module")
def trained(tiny_llava, tmp_path_factory):
    """One LoRA run on the tiny LLaVA, shared by the output checks."""
    root = tmp_path_factory.mktemp("ft_trained")
    data = make_train_set(root / "data")
    out = finetune(data, tiny_llava, root / "out", _cfg(max_steps=30, lora_dropout=0.0, lora_r=32, lora_alpha=64))
    return out, data


def test_loss_falls_and_outputs_are_complete(trained):
    out, _ = trained
    rows = _log(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert set(rows[0]) >= {"step", "epoch", "loss", "lr", "tokens", "elapsed"}
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert last < first - 0.6, (first, last)  # ~5.8 -> ~4.85 (a 2-layer random model with a frozen lm_head)
    assert rows[0]["lr"] == pytest.approx(5e-3) and rows[-1]["lr"] < rows[0]["lr"] / 10  # cosine decay
    assert rows[-1]["epoch"] == pytest.approx(15.0)  # 6 samples, batch 3 -> 2 steps per epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 6 and summary["skipped"] == 3 and summary["mode"] == "lora"
    assert summary["steps"] == 30 and summary["final_loss"] == rows[-1]["loss"]
    assert 0 < summary["trainable_params"] < summary["total_params"]
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["id"] for s in skipped) == ["broken", "missing", "question-only"]
    cfg = json.loads((out / "presel_config.json").read_text())
    assert cfg["stage"] == "finetune" and cfg["config"]["lora_r"] == 32
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "config.json").exists()  # the transformers model config
    assert not (out.parent / ".out.finetune-work").exists()  # work folder removed after success


def test_merged_model_equals_base_plus_adapter(trained, tiny_llava):
    from peft import PeftModel

    from presel.vlm.load import load_vlm

    out, data = trained
    batch = _encoded_batch(out, data)
    merged, _ = load_vlm(out, dtype="fp32", device="cpu")
    base, _ = load_vlm(tiny_llava, dtype="fp32", device="cpu")
    a = _logits(merged, batch)
    b = _logits(PeftModel.from_pretrained(base, str(out / "adapter")), batch)
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    base0, _ = load_vlm(tiny_llava, dtype="fp32", device="cpu")
    assert float((a - _logits(base0, batch)).abs().max()) > 1e-3  # training changed the model


def test_result_loads_with_plain_transformers(trained):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out, data = trained
    model = AutoModelForImageTextToText.from_pretrained(out)
    AutoProcessor.from_pretrained(out)
    batch = _encoded_batch(out, data)
    from presel.vlm.load import load_vlm

    ours, _ = load_vlm(out, dtype="fp32", device="cpu")
    assert torch.allclose(_logits(model.float(), batch), _logits(ours, batch), atol=1e-5)


def test_labels_mask_everything_but_assistant_tokens(tiny_llava, train_set):
    from presel.finetune.data import ConversationDataset, load_train_data
    from presel.vlm.load import load_vlm

    _, processor = load_vlm(tiny_llava, dtype="fp32", device="cpu")
    d = load_train_data(train_set)
    ds = ConversationDataset(d, processor)
    tok = processor.tokenizer
    for i, rec in enumerate(d.samples):
        enc = ds[(i, False)]
        keep = enc.labels != -100
        assert torch.equal(enc.labels[keep], enc.input_ids[keep])
        text = tok.decode(enc.labels[keep].tolist())
        for t in rec.conversations:
            if t.role == "assistant":
                assert t.text in text
            else:
                assert t.text.replace("<image>", "").strip() not in text
        assert int(keep.sum()) < len(enc.labels) // 2
        assert bool((ds[(i, True)].labels == -100).all())  # DDP placeholder adds nothing


def test_resume_after_kill_gives_the_same_weights(tiny_llava, tmp_path):
    data = make_train_set(tmp_path / "data", n=5)
    cfg = _cfg(max_steps=7, batch_size=2, grad_accum=2, save_every_steps=2, lora_dropout=0.1)
    ref = finetune(data, tiny_llava, tmp_path / "ref", cfg)

    class Killed(Exception):
        pass

    def kill_at_5(row):
        if row["step"] == 5:
            raise Killed

    out = tmp_path / "run"
    with pytest.raises(Killed):
        finetune(data, tiny_llava, out, cfg, on_step=kill_at_5)
    work = tmp_path / ".run.finetune-work"
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["step-00000004"]
    assert len((work / "train_log.jsonl").read_text().splitlines()) == 5
    assert not out.exists()
    finetune(data, tiny_llava, out, cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4
    assert [r["step"] for r in _log(out)] == list(range(1, 8))
    assert [r["loss"] for r in _log(out)] == pytest.approx([r["loss"] for r in _log(ref)], rel=1e-6)
    wa, wb = _weights(ref), _weights(out)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_resume_refuses_other_settings(tiny_llava, tmp_path):
    data = make_train_set(tmp_path / "data", n=4, bad=False)

    def stop(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(data, tiny_llava, tmp_path / "o", _cfg(max_steps=3, save_every_steps=1), on_step=stop)
    with pytest.raises(PreselError, match="unfinished run with other settings .*config"):
        finetune(data, tiny_llava, tmp_path / "o", _cfg(max_steps=3, save_every_steps=1, lr=1e-3))


def test_full_finetuning(tiny_llava, tmp_path):
    data = make_train_set(tmp_path / "data", bad=False)
    out = finetune(data, tiny_llava, tmp_path / "full", _cfg(full=True, lr=2e-3, max_steps=12))
    rows = _log(out)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert not (out / "adapter").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "full"
    from presel.vlm.load import load_vlm

    base, _ = load_vlm(tiny_llava, dtype="fp32", device="cpu")
    new, _ = load_vlm(out, dtype="fp32", device="cpu")
    b, n = dict(base.named_parameters()), dict(new.named_parameters())
    vision = [k for k in b if "vision_tower" in k]
    assert vision and all(torch.equal(b[k], n[k]) for k in vision)  # frozen by default
    assert any(not torch.equal(b[k], n[k]) for k in b if "language_model" in k)


def test_existing_out_is_refused_before_training(tiny_llava, tmp_path, train_set):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("keep me")
    with pytest.raises(PreselError, match="already exists"):
        finetune(train_set, tiny_llava, tmp_path / "o", _cfg(max_steps=1))
    assert (tmp_path / "o" / "x").read_text() == "keep me"


def test_cli(tiny_llava, tmp_path, capsys, monkeypatch):
    from presel.cli import main

    monkeypatch.setenv("PRESEL_CACHE", str(tiny_llava.parent.parent))  # so the offline name finds the built model
    data = make_train_set(tmp_path / "data", n=4)
    out = tmp_path / "cli"
    rc = main(["finetune", "--data", str(data), "--model", "tiny-llava", "--out", str(out), "--lora-r", "4",
               "--lora-alpha", "8", "--lr", "1e-3", "--projector-lr", "1e-4", "--batch-size", "2", "--max-steps", "3",
               "--save-every", "0", "--log-every", "0"])
    assert rc == 0
    assert str(out) in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["skipped"] == 3 and summary["model"] == "tiny-llava"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "a", "image": "nope.png", "conversations": [{"from": "gpt", "value": "x"}]}]))
    rc = main(["finetune", "--data", str(bad), "--model", str(tiny_llava), "--out", str(tmp_path / "o2")])
    assert rc == 2
    assert "no usable training sample" in capsys.readouterr().err


def test_result_scores_with_presel_score_and_fits_its_data_better(trained, tiny_llava, tmp_path):
    pytest.importorskip("presel.importance.scoring")
    import pyarrow.parquet as pq

    from presel.cli import main

    out, data = trained
    losses = {}
    for name, model in (("tuned", out), ("base", tiny_llava)):
        rc = main(["score", "--data", str(data), "--model", str(model), "--out", str(tmp_path / name), "--device", "cpu",
                   "--dtype", "fp32", "--default-task", "colours", "--batch-size", "4", "--quiet"])
        assert rc == 0
        t = pq.read_table(tmp_path / name / "irs.parquet").to_pylist()
        assert sorted(r["id"] for r in t) == [f"c{i}" for i in range(6)]
        assert all(math.isfinite(r["irs"]) for r in t)
        losses[name] = sum(r["loss_q"] for r in t) / len(t)
    assert losses["tuned"] < losses["base"] - 0.5, losses


def test_gguf_dequantized_model_saves(tiny_llava, tmp_path):
    """llava-small's language model comes from a GGUF file: transformers dequantizes it on load but keeps a gguf
    quantization marker that makes save_pretrained refuse; save_finetuned drops the marker (weights are floats)."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    from presel.finetune.merge import save_finetuned
    from presel.vlm.load import load_vlm

    model, processor = load_vlm(tiny_llava, dtype="fp32", device="cpu")
    qc = GgufConfig(gguf_file="x.gguf")
    model.hf_quantizer = GgufHfQuantizer(qc)
    model.config.text_config.quantization_config = qc.to_dict()
    save_finetuned(model, processor, tmp_path / "saved")
    assert "gguf" not in (tmp_path / "saved" / "config.json").read_text()
    again, _ = load_vlm(tmp_path / "saved", dtype="fp32", device="cpu")
    a, b = dict(model.named_parameters()), dict(again.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_byte_identical_weights(tiny_llava, tmp_path):
    data = make_train_set(tmp_path / "data", n=5, bad=False)
    a = finetune(data, tiny_llava, tmp_path / "a", _cfg(max_steps=3, lora_dropout=0.1))
    b = finetune(data, tiny_llava, tmp_path / "b", _cfg(max_steps=3, lora_dropout=0.1))
    c = finetune(data, tiny_llava, tmp_path / "c", _cfg(max_steps=3, lora_dropout=0.1, seed=1))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "adapter" / "adapter_model.safetensors").read_bytes() == (b / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_bf16_mixed_precision_with_gradient_checkpointing(tiny_llava, tmp_path):
    """The GPU recipe (bf16 frozen weights, fp32 trained weights, bf16 autocast, checkpointing) on CPU."""
    data = make_train_set(tmp_path / "data", n=4, bad=False)
    out = finetune(data, tiny_llava, tmp_path / "o", _cfg(dtype="bf16", gradient_checkpointing=True, max_steps=4,
                                                          save_every_steps=2))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dtype"] == "bf16" and summary["gradient_checkpointing"] is True
    assert all(math.isfinite(r["loss"]) for r in _log(out))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    from presel.vlm.load import load_vlm

    model, _ = load_vlm(out, dtype="bf16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_merge_adapter_rebuilds_the_merged_model(trained, tmp_path):
    from presel.finetune.merge import merge_adapter

    out, _ = trained
    again = merge_adapter(out / "adapter", tmp_path / "merged")  # base from adapter_config.json
    a, b = _weights(out), _weights(again)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(PreselError, match="no adapter_config.json"):
        merge_adapter(out, tmp_path / "x")
    merge_adapter(out / "adapter", tmp_path / "merged", overwrite=True)  # its own output: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(PreselError, match="was not written by presel"):
        merge_adapter(out / "adapter", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_folder_presel_did_not_write_before_training(tiny_llava, train_set, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    work = tmp_path / ".mine.finetune-work"
    with pytest.raises(PreselError, match=f"--out {out} exists and was not written by presel"):
        finetune(train_set, str(tiny_llava), out, _cfg(), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and not work.exists()
    # a work folder of the user's (no presel fingerprint) is not used, and so never deleted at the end
    work = tmp_path / ".new.finetune-work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    with pytest.raises(PreselError, match=f"work folder {work} exists and was not written by presel"):
        finetune(train_set, str(tiny_llava), tmp_path / "new", _cfg())
    assert (work / "keep.txt").read_text() == "mine"
