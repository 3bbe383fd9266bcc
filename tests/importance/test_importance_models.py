"""Offline LLaVA models: tiny (built in seconds, seeded) and small real (DINOv2-S + SmolLM2, slow)."""

import json

import pytest
from imp_data import make_annotated

from presel.errors import PreselError

torch = pytest.importorskip("torch")


def _weights(d):
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_tiny_build_is_seeded_and_loads_with_plain_transformers(tiny_llava, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from presel.vlm.build import build_tiny_llava

    again = build_tiny_llava(tmp_path / "again", seed=0)
    other = build_tiny_llava(tmp_path / "other", seed=1)
    a, b, c = _weights(tiny_llava), _weights(again), _weights(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert (tiny_llava / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    proc = AutoProcessor.from_pretrained(tiny_llava)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert proc.tokenizer.decode(proc.tokenizer("Is it red?")["input_ids"]) == "Is it red?"  # byte-level: exact
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_load_vlm_dtypes_and_errors(tiny_llava, tmp_path):
    from presel.vlm.load import load_vlm, resolve_dtype

    m, p = load_vlm(tiny_llava, dtype="bf16", device="cpu")
    assert next(m.parameters()).dtype == torch.bfloat16 and not m.training
    assert p.tokenizer.pad_token_id is not None and p.chat_template
    m, _ = load_vlm(tiny_llava)  # auto on CPU: fp32
    assert next(m.parameters()).dtype == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(PreselError, match="dtype='int4'"):
        load_vlm(tiny_llava, dtype="int4")
    with pytest.raises(PreselError, match="cannot load the processor of model"):
        load_vlm(tmp_path / "nothing-here")


def test_tiny_model_generates_through_the_processor(tiny_loaded):
    """The same processor path evaluation uses: chat template with a generation prompt, batched, left padded."""
    from PIL import Image

    model, proc = tiny_loaded
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    tok = proc.tokenizer
    old, tok.padding_side = tok.padding_side, "left"
    try:
        inputs = proc(images=[Image.new("RGB", (30, 20))] * 2, text=[text, text.replace("colour", "shape is it")],
                      return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    finally:
        tok.padding_side = old
    assert out.shape[0] == 2 and out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_cli_models_tiny(tmp_path, capsys):
    from presel.cli import main

    assert main(["models", "tiny-llava", "--out", str(tmp_path / "t")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "presel_source.json").read_text())["model"] == "tiny-llava"


@pytest.mark.slow
def test_small_llava_loads_and_scores(small_llava, tmp_path):
    """The real small LLaVA: DINOv2-S vision tower, SmolLM2 language model, 64 image tokens at 112 px;
    scores the reference samples; its language model still answers text questions (weights are real)."""
    from presel.importance.scoring import ScoreConfig, score_to_dir
    from presel.vlm.load import load_vlm

    cfg = json.loads((small_llava / "config.json").read_text())
    assert cfg["vision_config"]["model_type"] == "dinov2" and cfg["text_config"]["model_type"] == "llama"
    assert cfg["image_seq_length"] == 64
    model, proc = load_vlm(small_llava, dtype="fp32", device="cpu")
    tok = proc.tokenizer
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
    data = make_annotated(tmp_path / "data", n=4, bad=False)
    s = score_to_dir(data, tmp_path / "irs", ScoreConfig(model=str(small_llava), batch_size=4, dtype="fp32",
                                                       device="cpu"), progress=False)
    assert s["scored"] == 4 and s["rejected"] == 0
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "irs" / "irs.parquet").to_pydict()
    assert all(0 < q < 20 and 0 < nq < 20 for q, nq in zip(t["loss_q"], t["loss_noq"]))
