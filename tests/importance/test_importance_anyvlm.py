"""Another VLM family through the same code: a tiny random Qwen2-VL (M-RoPE, patch-list pixel values,
per-token ``mm_token_type_ids``, a default system turn in its template), built in memory."""

import pytest

from presel.records import Turn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TURNS = (Turn("user", "<image>\nWhat colour is it?"), Turn("assistant", "It is red."), Turn("user", "Box?"),
         Turn("assistant", "Yes, one."))


@pytest.fixture(scope="module")
def qwen():
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )
    from transformers.processing_utils import ProcessorMixin

    from presel.vlm.build import _tiny_tokenizer

    tok = _tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<image>", "<|vision_start|>",
                                                          "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    tok.chat_template = QWEN_TEMPLATE
    ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)
    orig = ProcessorMixin.check_argument_for_proper_class
    mp = pytest.MonkeyPatch()
    # without torchvision there is no Qwen2-VL video processor class to check a (missing) one against
    mp.setattr(ProcessorMixin, "check_argument_for_proper_class",
               lambda self, name, arg: None if arg is None else orig(self, name, arg))
    try:
        proc = Qwen2VLProcessor(image_processor=ip, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    finally:
        mp.undo()
    tid = tok.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(cfg).eval()
    return model, proc


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    return [Image.new("RGB", (60, 50), (200, 10, 10)), Image.new("RGB", (90, 40), (10, 200, 10)),
            Image.new("RGB", (40, 100), (10, 10, 200))]


def test_rendering_and_labels(qwen, images):
    from presel.vlm.render import encode_conversation

    _, proc = qwen
    tok = proc.tokenizer
    e = encode_conversation(proc, images[0], TURNS)
    text = tok.decode(e.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|>")
    assert tok.decode(e.input_ids[e.labels != -100]) == "It is red.<|im_end|>Yes, one.<|im_end|>"
    assert set(e.extras) == {"pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert e.extras["mm_token_type_ids"].shape == e.input_ids.shape  # per-token extra, stored 1-D
    n_img = int((e.input_ids == proc.image_token_id).sum())
    assert n_img == int(e.extras["image_grid_thw"].prod()) // 4  # merge 2x2
    nq = encode_conversation(proc, images[0], TURNS, drop_question=True)
    assert tok.decode(nq.input_ids[nq.labels != -100]) == "It is red. Yes, one.<|im_end|>"
    assert "colour" not in tok.decode(nq.input_ids)


def test_pairs_equal_single_renderings(qwen, images):
    from presel.vlm.render import encode_conversation, encode_pairs

    _, proc = qwen
    convs = [TURNS, TURNS[:2], TURNS]
    for im, t, pair in zip(images, convs, encode_pairs(proc, images, convs)):
        for got, drop in zip(pair, (False, True)):
            ref = encode_conversation(proc, im, t, drop_question=drop)
            assert torch.equal(got.input_ids, ref.input_ids) and torch.equal(got.labels, ref.labels)
            assert got.extras.keys() == ref.extras.keys()
            assert all(torch.equal(got.extras[k], ref.extras[k]) for k in ref.extras)


def test_batched_scoring_equals_unbatched(qwen, images, tmp_path):
    from presel.importance.scoring import Scorer

    scorer = Scorer("qwen-tiny", loaded=qwen)
    items = []
    for i, im in enumerate(images):
        p = tmp_path / f"{i}.png"
        im.save(p)
        turns = TURNS if i != 1 else TURNS[:2]
        items.append({"id": str(i), "task": "t", "path": str(p), "turns": [[t.role, t.text] for t in turns]})
    batched = scorer.score(items)
    single = [scorer.score([it])[0] for it in items]
    full = Scorer("qwen-tiny", loaded=qwen, logits_to_keep=False).score(items)
    for a, b, c in zip(batched, single, full):
        assert a["n_response_tokens"] == b["n_response_tokens"] > 0
        for k in ("loss_q", "loss_noq", "irs"):
            assert abs(a[k] - b[k]) < 1e-4 and abs(a[k] - c[k]) < 1e-4, k


def test_fast_template_rendering_equals_the_processor(qwen):
    from presel.vlm.render import _template, build_messages

    _, proc = qwen
    for drop in (False, True):
        msgs = build_messages(TURNS, drop_question=drop)
        for gp in (False, True):
            assert _template(proc, msgs, gp) == proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gp)
