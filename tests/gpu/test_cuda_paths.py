"""The CUDA paths in bf16: feature extraction (pinned memory, decode workers), batched IRS scoring, LoRA
fine-tuning with a resume. Skipped without CUDA (tests/conftest.py); ``scripts/gpu-check.sh`` measures the
same paths at size."""

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


def _images(root: Path, n: int) -> list[str]:
    from PIL import Image, ImageDraw

    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        a = rng.integers(0, 255, (40 + i % 7, 50 + i % 5, 3), dtype=np.uint8)
        img = Image.fromarray(a)
        ImageDraw.Draw(img).rectangle([3, 4, 20 + i % 9, 30], fill=(255, 255, 255))
        img.save(root / "imgs" / f"i{i}.jpg", quality=90)
        names.append(f"i{i}.jpg")
    return names


def test_bf16_embed_pool_on_cuda_matches_fp32_cpu(tiny_dinov2, tmp_path):
    from presel.features.extract import EmbedConfig, embed_pool
    from presel.io.features import load_features
    from presel.io.manifest import read_pool

    names = _images(tmp_path, 40)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "image": f"imgs/{n}", "task": "t"}) + "\n"
                                                 for i, n in enumerate(names)))
    pool = read_pool(tmp_path / "pool.jsonl")
    common = dict(model=str(tiny_dinov2), batch_size=16, progress=False, shard_size=16)
    gpu = embed_pool(pool, tmp_path / "gpu", EmbedConfig(device="cuda", dtype="bf16", workers=2, **common))
    cpu = embed_pool(pool, tmp_path / "cpu", EmbedConfig(device="cpu", dtype="fp32", workers=0, **common))
    assert gpu["embedded_now"] == cpu["embedded_now"] == 40 and gpu["rejected_images"] == 0
    a, b = load_features(tmp_path / "gpu"), load_features(tmp_path / "cpu")
    assert sorted(a.ids) == sorted(b.ids)
    va = a.rows(np.asarray([a.index[k] for k in b.ids]))
    vb = b.rows(np.arange(len(b)))
    assert np.isfinite(va).all()
    cos = (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
    assert cos.min() > 0.99, cos.min()  # bf16 compute, same [CLS] features


def test_bf16_backend_dtype_and_pinned_input(tiny_dinov2):
    from presel.features.backends import BackendSpec, load_backend

    be = load_backend(BackendSpec(backend="hf", model=str(tiny_dinov2), dtype="bf16", device="cuda"))
    assert next(be.model.parameters()).dtype == torch.bfloat16
    x = torch.randint(0, 255, (4, 28, 28, 3), dtype=torch.uint8).pin_memory()
    px = be.pixel_values(x)
    assert px.device.type == "cuda" and px.dtype == torch.bfloat16
    v = be.embed(x)
    assert v.dtype == np.float32 and v.shape == (4, 32) and np.isfinite(v).all()


def test_bf16_batched_irs_equals_unbatched(tiny_llava, tmp_path):
    from presel.importance.scoring import Scorer, plan_batches, score_stream

    names = _images(tmp_path, 12)
    items = []
    for i, n in enumerate(names):
        turns = [["user", "<image>\nWhat is in this picture?"], ["assistant", f"A white box, number {i}."]]
        if i % 3 == 2:
            turns += [["user", "Anything else?"], ["assistant", "Some noise around it, nothing more."]]
        items.append({"id": f"s{i}", "task": "t", "path": str(tmp_path / "imgs" / n), "turns": turns})
    scorer = Scorer(str(tiny_llava), dtype="bf16", device="cuda")
    assert scorer.dtype == torch.bfloat16 and scorer.device.type == "cuda"

    def run(bs, workers):
        out = {}
        for rows in score_stream(scorer, plan_batches(items, bs), prefetch=bs > 1, render_workers=workers):
            out.update({r["id"]: r for r in rows})
        return out

    one, many = run(1, 0), run(6, 2)
    assert all("irs" in r for r in [*one.values(), *many.values()])
    diff = max(abs(one[k]["irs"] - many[k]["irs"]) for k in one)
    assert diff < 1e-3, diff


def test_bf16_lora_steps_resume_and_peak_memory(tiny_llava, tmp_path):
    from presel.finetune.train import FinetuneConfig, finetune
    from presel.vlm.load import load_vlm

    names = _images(tmp_path, 8)
    recs = [{"id": f"c{i}", "image": f"imgs/{n}", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture."},
        {"from": "gpt", "value": f"Noise with a white box, number {i}."}]} for i, n in enumerate(names)]
    (tmp_path / "train.json").write_text(json.dumps(recs))
    cfg = FinetuneConfig(lora_r=8, lora_alpha=16, batch_size=2, max_steps=3, dtype="bf16", device="cuda",
                         save_every_steps=1, log_every=0, num_workers=1, warmup_ratio=0.0)

    # an earlier allocation in the same process must not count as this run's peak
    big = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    del big
    torch.cuda.empty_cache()

    class Crash(Exception):
        pass

    def crash(row):
        if row["step"] == 2:
            raise Crash

    with pytest.raises(Crash):
        finetune(tmp_path / "train.json", str(tiny_llava), tmp_path / "out", cfg, image_root=tmp_path, on_step=crash)
    finetune(tmp_path / "train.json", str(tiny_llava), tmp_path / "out", cfg, image_root=tmp_path)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["dtype"] == "bf16" and s["device"].startswith("cuda") and s["gradient_checkpointing"] is True
    assert s["resumed_from_step"] == 2 and s["steps"] == 3
    assert np.isfinite(s["first_loss"]) and np.isfinite(s["final_loss"])
    assert 0 < s["peak_memory_bytes"] < 2**30
    model, _ = load_vlm(tmp_path / "out", dtype="bf16", device="cuda")
    assert next(model.parameters()).dtype == torch.bfloat16
