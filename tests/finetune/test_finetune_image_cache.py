"""The frozen vision tower's outputs, cached once per image, give the same training as encoding on the fly."""

import json

import pytest
from ft_data import make_train_set

from presel.finetune.train import FinetuneConfig, finetune

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

FAST = dict(lora_r=8, lora_alpha=16, lr=5e-3, projector_lr=1e-3, batch_size=3, save_every_steps=0, log_every=0,
            max_length=None, warmup_ratio=0.0, lora_dropout=0.0, max_steps=6)


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_cached_image_features_give_the_same_losses_as_on_the_fly(tiny_llava, tmp_path):
    data = make_train_set(tmp_path / "data", bad=False)
    plain = finetune(data, tiny_llava, tmp_path / "plain", FinetuneConfig(**FAST))
    cache = tmp_path / "features"
    cached = finetune(data, tiny_llava, tmp_path / "cached", FinetuneConfig(**FAST), image_features=cache)
    files = list(cache.glob("*/*.npy"))
    assert len(files) == 6  # one per distinct image, under one vision key
    assert _losses(cached) == pytest.approx(_losses(plain), rel=1e-4, abs=1e-5)
    # a second fine-tune reads the cache instead of running the tower again (same files, untouched)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = finetune(data, tiny_llava, tmp_path / "again", FinetuneConfig(**FAST), image_features=cache)
    assert {f: f.stat().st_mtime_ns for f in cache.glob("*/*.npy")} == mtimes
    assert _losses(again) == pytest.approx(_losses(cached), rel=1e-6, abs=1e-7)


def test_image_features_match_the_models_own_embedding(tiny_llava, tmp_path):
    from presel.finetune.data import ConversationDataset, load_train_data
    from presel.finetune.train import _pad_token_id
    from presel.vlm.image_features import CachedFeatureDataset, ImageFeatures, supports
    from presel.vlm.load import load_vlm
    from presel.vlm.render import collate

    data = make_train_set(tmp_path / "data", bad=False)
    model, processor = load_vlm(tiny_llava, dtype="fp32", device="cpu")
    assert supports(model)
    ds = ConversationDataset(load_train_data(data), processor)
    feats = ImageFeatures(model, processor, tmp_path / "f")
    cds = CachedFeatureDataset(ds, feats)
    items = [(i, False) for i in range(4)]
    b = collate([ds[i] for i in items], _pad_token_id(processor))
    c = collate([cds[i] for i in items], _pad_token_id(processor))
    assert "pixel_values" not in c["extras"] and c["extras"]["image_features"].shape[0] == 4
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **b["extras"]).logits
        emb = feats.embed(model, c["input_ids"], c["extras"]["image_features"])
        got = model(inputs_embeds=emb, attention_mask=c["attention_mask"]).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # keyed by content: a copy of an image under another name reuses its features
    src = ds.pool.locator(ds.samples[0])
    (tmp_path / "copy.png").write_bytes(open(src, "rb").read())
    assert feats.image_key(tmp_path / "copy.png") == feats.image_key(src)
    # a damaged cache file is computed again, not trusted
    f = next((tmp_path / "f").glob("*/*.npy"))
    key = f.stem
    f.write_bytes(b"not a numpy file")
    fresh = ImageFeatures(model, processor, tmp_path / "f")
    fresh.ensure_keys([(key, next(ds.pool.locator(r) for r in ds.samples if feats.image_key(ds.pool.locator(r)) == key))])
    assert fresh.computed == 1
    torch.testing.assert_close(fresh.feature(key), feats.feature(key))


def test_cache_with_bf16_weights_and_fp32_projector(tiny_llava, tmp_path):
    """bf16 (as on CUDA): frozen tower in bf16, trained projector in fp32 master weights, autocast."""
    data = make_train_set(tmp_path / "data", bad=False)
    cfg = FinetuneConfig(**dict(FAST, dtype="bf16", max_steps=3))
    plain = finetune(data, tiny_llava, tmp_path / "plain", cfg)
    cached = finetune(data, tiny_llava, tmp_path / "cached", cfg, image_features=tmp_path / "f")
    assert _losses(cached) == pytest.approx(_losses(plain), rel=2e-2)
