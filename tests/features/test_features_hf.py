"""HF backend: extracted features equal direct model calls; preprocessing equals the HF image processor."""

import json

import numpy as np
import pytest
from PIL import Image

from presel.errors import PreselError
from presel.features.extract import EmbedConfig, embed_pool
from presel.io.features import load_features
from presel.io.manifest import read_pool


def _hf_pixels(model_dir, paths, **kw):
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    cfg.pop("image_processor_type", None)
    cfg.update(kw)
    proc = BitImageProcessorPil(**cfg)
    return proc([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]


def test_preprocess_equals_hf_processor(tiny_dinov2, tmp_path, write_pool):
    from presel.features.images import Preprocess, load_rgb

    write_pool(tmp_path, ["a.png", "b.png"])
    Image.fromarray(np.asarray(Image.open(tmp_path / "imgs/a.png"))[:, :17]).save(tmp_path / "imgs/tall.png")
    paths = [tmp_path / "imgs" / n for n in ("a.png", "b.png", "tall.png")]
    pre = Preprocess.from_processor_dict(json.loads((tiny_dinov2 / "preprocessor_config.json").read_text()))
    ours = pre.normalize_numpy(np.stack([pre(load_rgb(p)) for p in paths]))
    ref = _hf_pixels(tiny_dinov2, paths).numpy()
    assert ours.shape == ref.shape == (3, 3, 28, 28)
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_extracted_features_equal_direct_model_call(tiny_dinov2, tmp_path, write_pool, pooling):
    import torch
    from transformers import AutoModel

    names = [f"i{i}.png" for i in range(5)]
    pool = read_pool(write_pool(tmp_path, names))
    cfg = EmbedConfig(model=str(tiny_dinov2), pooling=pooling, batch_size=2, workers=0, store_dtype="float32",
                      device="cpu", progress=False)
    stats = embed_pool(pool, tmp_path / "feats", cfg)
    assert stats["embedded_now"] == 5 and stats["rejected_images"] == 0
    fm = load_features(tmp_path / "feats")
    assert fm.ids == [f"imgs/{n}" for n in names]
    model = AutoModel.from_pretrained(tiny_dinov2).eval()
    with torch.no_grad():
        out = model(pixel_values=_hf_pixels(tiny_dinov2, [tmp_path / "imgs" / n for n in names]))
    ref = {"cls": out.last_hidden_state[:, 0], "mean": out.last_hidden_state[:, 1:].mean(1),
           "pooler": out.pooler_output}[pooling].numpy()
    got = fm.rows(np.arange(5))
    assert np.abs(got - ref).max() < 1e-4
    assert np.abs(got[0] - got[1]).max() > 1e-3  # distinct images, distinct features


def test_image_size_override_interpolates(tiny_dinov2, tmp_path, write_pool):
    import torch
    from transformers import AutoModel

    pool = read_pool(write_pool(tmp_path, ["a.png", "b.png"]))
    cfg = EmbedConfig(model=str(tiny_dinov2), image_size=42, workers=0, store_dtype="float32", progress=False)
    embed_pool(pool, tmp_path / "feats", cfg)
    fm = load_features(tmp_path / "feats")
    px = _hf_pixels(tiny_dinov2, [tmp_path / "imgs/a.png", tmp_path / "imgs/b.png"],
                    size={"shortest_edge": 48}, crop_size={"height": 42, "width": 42})
    assert px.shape[-1] == 42
    with torch.no_grad():
        ref = AutoModel.from_pretrained(tiny_dinov2).eval()(pixel_values=px).last_hidden_state[:, 0].numpy()
    assert np.abs(fm.rows(np.arange(2)) - ref).max() < 1e-4
    cfgj = json.loads((tmp_path / "feats" / "config.json").read_text())
    assert cfgj["stage"] == "embed" and cfgj["image_size"] == [42, 42]


def test_clip_vision_tower_pooler(tmp_path, write_pool):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    d = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=28, patch_size=7)).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"shortest_edge": 28}, "do_center_crop": True,
        "crop_size": {"height": 28, "width": 28}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 1 / 255}))
    pool = read_pool(write_pool(tmp_path, ["a.png", "b.png"]))
    embed_pool(pool, tmp_path / "feats", EmbedConfig(model=str(d), pooling="pooler", workers=0,
                                                     store_dtype="float32", progress=False))
    fm = load_features(tmp_path / "feats")
    px = _hf_pixels(d, [tmp_path / "imgs/a.png", tmp_path / "imgs/b.png"])
    with torch.no_grad():
        ref = CLIPVisionModel.from_pretrained(d).eval()(pixel_values=px).pooler_output.numpy()
    assert np.abs(fm.rows(np.arange(2)) - ref).max() < 1e-4


def test_config_validation_messages():
    with pytest.raises(PreselError, match="batch_size=0 must be an integer >= 1"):
        EmbedConfig(batch_size=0)
    with pytest.raises(PreselError, match="pooling='max'"):
        EmbedConfig(pooling="max")
    with pytest.raises(PreselError, match="store_dtype"):
        EmbedConfig(store_dtype="int8")
    with pytest.raises(PreselError, match="workers=-1"):
        EmbedConfig(workers=-1)
    with pytest.raises(PreselError, match="executor"):
        EmbedConfig(executor="spark")


def test_bf16_on_cpu_is_refused(tiny_dinov2, tmp_path, write_pool):
    pool = read_pool(write_pool(tmp_path, ["a.png"]))
    with pytest.raises(PreselError, match="needs CUDA"):
        embed_pool(pool, tmp_path / "f", EmbedConfig(model=str(tiny_dinov2), dtype="bf16", device="cpu"))
