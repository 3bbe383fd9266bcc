"""Locating language model / vision tower / projector in several VLM families (tiny random models from configs)."""

import pytest

from presel.finetune.train import FinetuneConfig, prepare_model
from presel.vlm.parts import find_parts

pytest.importorskip("peft")

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SPECS = {
    "llava": (dict(text_config={**TEXT, "model_type": "llama"},
                   vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)),
              ("model.language_model", "model.vision_tower", "model.multi_modal_projector")),
    "qwen2_vl": (dict(text_config={**TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
                      vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2)),
                 ("model.language_model", "model.visual", "model.visual.merger")),
    "idefics3": (dict(text_config={**TEXT, "model_type": "llama"},
                      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)),
                 ("model.text_model", "model.vision_model", "model.connector")),
}


@pytest.mark.parametrize("model_type", sorted(SPECS))
def test_parts_and_trainable_groups(model_type):
    from transformers import AutoConfig, AutoModelForImageTextToText

    kw, expected = SPECS[model_type]
    model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type, **kw))
    parts = find_parts(model)
    assert (parts.language, parts.vision, parts.projector) == expected
    net, info = prepare_model(model, FinetuneConfig(lora_r=4, lora_alpha=8))
    g = info["groups"]
    assert g["language"] and all(".lora_" in n and f".{parts.language}." in n for n in g["language"])
    assert g["projector"] and all(f".{parts.projector}.modules_to_save." in n for n in g["projector"])
    assert g["vision"] == []
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(g["language"]) | set(g["projector"])

    model = AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type, **kw))
    net, info = prepare_model(model, FinetuneConfig(full=True, projector_lr=0))
    assert info["groups"]["projector"] == [] and info["groups"]["vision"] == []
    assert all(n.startswith(parts.language) or n.startswith("lm_head") for n in info["groups"]["language"])
