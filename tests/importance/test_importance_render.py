"""Rendering with the model's chat template: exact token layout, response-only labels, collate, loss."""

import math

import pytest

from presel.errors import PreselError
from presel.records import Turn

torch = pytest.importorskip("torch")

Q1, A1 = "<image>\nWhat colour is the background?", "It is red."
Q2, A2 = "Is there a white box?", "Yes, one."
TWO_TURNS = (Turn("user", Q1), Turn("assistant", A1), Turn("user", Q2), Turn("assistant", A2))


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    return Image.new("RGB", (50, 37), (200, 20, 20))


def _segments(tok, segs):
    """Expected (input_ids, labels) from text segments ``(text, is_response)``, each tokenized on its own
    (segment borders are special tokens or newlines, where the byte-level tokenizer splits anyway)."""
    ids, labels = [], []
    for text, resp in segs:
        part = tok(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if resp else [-100] * len(part)
    return ids, labels


def test_multi_turn_layout_and_labels_exactly(tiny_loaded, image):
    from presel.vlm.render import encode_conversation

    _, proc = tiny_loaded
    tok = proc.tokenizer
    enc = encode_conversation(proc, image, TWO_TURNS)
    img = "<image>" * 16  # 32 px / 8 px patches, CLS dropped
    ids, labels = _segments(tok, [
        ("<|im_start|>user\n" + img + "\nWhat colour is the background?<|im_end|>\n<|im_start|>assistant\n", False),
        (A1 + "<|im_end|>", True),
        ("\n<|im_start|>user\n" + Q2 + "<|im_end|>\n<|im_start|>assistant\n", False),
        (A2 + "<|im_end|>", True),
        ("\n", False)])
    assert enc.input_ids.tolist() == ids
    assert enc.labels.tolist() == labels
    assert enc.input_ids.dtype == torch.long and enc.labels.dtype == torch.long and enc.input_ids.dim() == 1
    assert enc.n_response_tokens == sum(1 for x in labels if x != -100)
    assert set(enc.extras) == {"pixel_values"} and tuple(enc.extras["pixel_values"].shape) == (1, 3, 32, 32)


def test_no_question_rendering(tiny_loaded, image):
    from presel.vlm.render import encode_conversation

    _, proc = tiny_loaded
    tok = proc.tokenizer
    enc = encode_conversation(proc, image, TWO_TURNS, drop_question=True)
    text = tok.decode(enc.input_ids)
    assert text == ("<|im_start|>user\n" + "<image>" * 16 + "\n<|im_end|>\n<|im_start|>assistant\n"
                    "It is red. Yes, one.<|im_end|>\n")
    assert tok.decode(enc.input_ids[enc.labels != -100]) == "It is red. Yes, one.<|im_end|>"
    assert "colour" not in text and "box" not in text
    # the labelled tokens are one contiguous run: the joined reply + its end-of-turn token
    pos = (enc.labels != -100).nonzero()[:, 0]
    assert pos.tolist() == list(range(int(pos[0]), int(pos[-1]) + 1))


def test_pair_equals_two_renderings(tiny_loaded, image):
    from presel.vlm.render import encode_conversation, encode_pair

    _, proc = tiny_loaded
    a, b = encode_pair(proc, image, TWO_TURNS)
    for got, drop in ((a, False), (b, True)):
        ref = encode_conversation(proc, image, TWO_TURNS, drop_question=drop)
        assert torch.equal(got.input_ids, ref.input_ids) and torch.equal(got.labels, ref.labels)
        assert got.extras.keys() == ref.extras.keys()
        assert all(torch.equal(got.extras[k], ref.extras[k]) for k in ref.extras)


def test_system_turn_reply_first_and_placeholder_anywhere(tiny_loaded, image):
    from presel.vlm.render import build_messages, encode_conversation

    _, proc = tiny_loaded
    tok = proc.tokenizer
    turns = (Turn("system", "Be brief."), Turn("user", "Look: <image> what is it?"), Turn("assistant", "A box."))
    msgs = build_messages(turns)
    assert msgs[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert msgs[1]["content"] == [{"type": "image"}, {"type": "text", "text": "Look:  what is it?"}]
    enc = encode_conversation(proc, image, turns)
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>")
    assert tok.decode(enc.input_ids[enc.labels != -100]) == "A box.<|im_end|>"
    nq = encode_conversation(proc, image, turns, drop_question=True)
    assert tok.decode(nq.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>")
    # a conversation that opens with a reply gets an image-only user turn first
    first = build_messages((Turn("assistant", "Hello."),))
    assert first[0] == {"role": "user", "content": [{"type": "image"}]}


def test_other_template_styles(tiny_loaded, image):
    """A vicuna-style template (``USER: ... ASSISTANT: reply<eos>``, no newlines) and one without any
    end-of-turn token: labels follow the template."""
    import copy

    from presel.vlm.render import encode_conversation

    _, proc = tiny_loaded
    p = copy.deepcopy(proc)
    p.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} "
        "{% else %}ASSISTANT: {{ m['content'][0]['text'] }}{{ END }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    tok = p.tokenizer
    vicuna = p.chat_template.replace("{{ END }}", "<|endoftext|>")
    bare = p.chat_template.replace("{{ END }}", "")
    # the space after "ASSISTANT:" belongs to the reply's first token only when the tokenizer merges them
    sp = {w: " " if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 else "" for w in ("It", "Yes")}
    p.chat_template = vicuna
    enc = encode_conversation(p, image, TWO_TURNS)
    assert tok.decode(enc.input_ids[enc.labels != -100]) == f"{sp['It']}It is red.<|endoftext|>{sp['Yes']}Yes, one.<|endoftext|>"
    p.chat_template = bare
    enc = encode_conversation(p, image, TWO_TURNS)
    assert tok.decode(enc.input_ids[enc.labels != -100]) == f"{sp['It']}It is red.{sp['Yes']}Yes, one."
    assert "USER" not in tok.decode(enc.input_ids[enc.labels != -100])


def test_truncation(tiny_loaded, image):
    from presel.vlm.render import encode_conversation

    _, proc = tiny_loaded
    full = encode_conversation(proc, image, TWO_TURNS)
    cut = encode_conversation(proc, image, TWO_TURNS, max_length=len(full.input_ids) - 5)
    assert torch.equal(cut.input_ids, full.input_ids[:-5]) and torch.equal(cut.labels, full.labels[:-5])
    with pytest.raises(PreselError, match="max_length=10 would cut the image tokens"):
        encode_conversation(proc, image, TWO_TURNS, max_length=10)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_and_masks(tiny_loaded, image, side):
    from presel.vlm.render import Encoded, collate, encode_conversation

    _, proc = tiny_loaded
    a = encode_conversation(proc, image, TWO_TURNS)
    b = encode_conversation(proc, image, TWO_TURNS[:2])
    b.extras["token_type_ids"] = torch.arange(len(b.input_ids))
    a.extras["token_type_ids"] = torch.arange(len(a.input_ids))
    batch = collate([a, b], pad_token_id=0, padding_side=side)
    L, n = len(a.input_ids), len(b.input_ids)
    assert batch["input_ids"].shape == (2, L) and batch["attention_mask"].shape == (2, L)
    sl = slice(0, n) if side == "right" else slice(L - n, L)
    pad = slice(n, L) if side == "right" else slice(0, L - n)
    assert torch.equal(batch["input_ids"][1, sl], b.input_ids) and (batch["input_ids"][1, pad] == 0).all()
    assert batch["attention_mask"][1, sl].all() and not batch["attention_mask"][1, pad].any()
    assert (batch["labels"][1, pad] == -100).all() and torch.equal(batch["labels"][1, sl], b.labels)
    assert batch["attention_mask"][0].all() and torch.equal(batch["labels"][0], a.labels)
    assert tuple(batch["extras"]["pixel_values"].shape) == (2, 3, 32, 32)
    assert torch.equal(batch["extras"]["token_type_ids"][1, sl], b.extras["token_type_ids"])
    # extras whose shapes differ are zero-padded (e.g. LLaVA-NeXT patch counts)
    x = Encoded(torch.tensor([1, 2]), torch.tensor([-100, 2]), {"pixel_values": torch.ones(1, 2, 3)})
    y = Encoded(torch.tensor([1, 2, 3]), torch.tensor([-100, 2, 3]), {"pixel_values": torch.ones(1, 4, 3)})
    pv = collate([x, y], 0)["extras"]["pixel_values"]
    assert pv.shape == (2, 4, 3) and pv[0, 2:].abs().sum() == 0 and pv[0, :2].sum() == 6


def _manual_mean_ce(logits, labels):
    """Hand-written reference: mean over t with labels[t+1] != -100 of -log softmax(logits[t])[labels[t+1]]."""
    out = []
    for i in range(labels.shape[0]):
        total, n = 0.0, 0
        for t in range(labels.shape[1] - 1):
            y = int(labels[i, t + 1])
            if y == -100:
                continue
            row = [float(v) for v in logits[i, t]]
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            total += lse - row[y]
            n += 1
        out.append((total / n if n else float("nan"), n))
    return out


def test_response_loss_equals_manual_cross_entropy(tiny_loaded, image):
    from presel.vlm.render import collate, encode_conversation, response_loss

    model, proc = tiny_loaded
    encs = [encode_conversation(proc, image, TWO_TURNS), encode_conversation(proc, image, TWO_TURNS[:2], drop_question=True)]
    batch = collate(encs, proc.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **batch["extras"]).logits
    sums, counts = response_loss(logits, batch["labels"])
    assert sums.dtype == torch.float32 and counts.tolist() == [e.n_response_tokens for e in encs]
    for (mean, n), s, c in zip(_manual_mean_ce(logits, batch["labels"]), sums, counts):
        assert n == int(c)
        assert float(s) / int(c) == pytest.approx(mean, abs=1e-5)
    # random logits in bf16: computed in fp32, still the manual value
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(2, 7, 11, generator=g).to(torch.bfloat16)
    lab = torch.tensor([[-100, 3, 4, -100, 5, -100, -100], [-100, -100, -100, -100, -100, 1, 2]])
    s, c = response_loss(lg, lab)
    ref = _manual_mean_ce(lg.float(), lab)
    assert c.tolist() == [3, 2]
    assert [float(x) / int(n) for x, n in zip(s, c)] == pytest.approx([r[0] for r in ref], abs=1e-5)
    # no response token at all: zero sum, zero count
    s, c = response_loss(lg, torch.full((2, 7), -100))
    assert s.tolist() == [0.0, 0.0] and c.tolist() == [0, 0]


def test_response_loss_is_differentiable():
    from presel.vlm.render import response_loss

    lg = torch.randn(1, 4, 5, requires_grad=True)
    s, _ = response_loss(lg, torch.tensor([[-100, 1, 2, -100]]))
    s.sum().backward()
    assert lg.grad is not None and lg.grad[0, :2].abs().sum() > 0 and lg.grad[0, 2:].abs().sum() == 0


def test_pair_fallbacks_equal_two_renderings(tiny_loaded, image, monkeypatch):
    """The batched-processor and the two-call fallbacks of encode_pair give the same encodings."""
    import presel.vlm.render as render

    _, proc = tiny_loaded
    refs = [render.encode_conversation(proc, image, TWO_TURNS, drop_question=d) for d in (False, True)]
    monkeypatch.setattr(render, "_splice", lambda *a: None)
    for mode in ("batched", "two calls"):
        if mode == "two calls":
            monkeypatch.setattr(render, "_split_extras", lambda *a: None)
        for got, ref in zip(render.encode_pair(proc, image, TWO_TURNS), refs):
            assert torch.equal(got.input_ids, ref.input_ids) and torch.equal(got.labels, ref.labels), mode
            assert all(torch.equal(got.extras[k], ref.extras[k]) for k in ref.extras), mode


def test_splice_checks():
    from presel.vlm.render import _splice

    # placeholder 9 at position 1 expanded to 9,9,9 (LLaVA) or 8,9,9,7 (around-image tokens); the other text
    # shares the prefix up to the placeholder
    assert _splice([1, 9, 2, 3], [1, 9, 9, 9, 2, 3], [1, 9, 5], 9) == [1, 9, 9, 9, 5]
    assert _splice([1, 9, 2, 3], [1, 8, 9, 9, 7, 2, 3], [1, 9, 5, 6], 9) == [1, 8, 9, 9, 7, 5, 6]
    assert _splice([1, 9, 2, 3], [1, 9, 9, 9, 2, 4], [1, 9, 5], 9) is None  # a token after the image changed
    assert _splice([1, 9, 2, 3], [1, 9, 9, 9, 2, 3], [7, 9, 5], 9) is None  # different prefix
    assert _splice([1, 9, 2, 9], [1, 9, 9, 9, 2, 9, 9, 9], [1, 9, 5], 9) is None  # two placeholders
    assert _splice([1, 9, 2], [1, 9, 9, 2], [1, 9, 2], None) is None  # image token unknown


def test_fast_template_rendering_equals_the_processor(tiny_loaded):
    from presel.vlm.render import _template, build_messages

    _, proc = tiny_loaded
    for turns in (TWO_TURNS, TWO_TURNS[:1], (Turn("system", "S."),) + TWO_TURNS):
        for drop in (False, True):
            msgs = build_messages(turns, drop_question=drop)
            for gp in (False, True):
                assert _template(proc, msgs, gp) == proc.apply_chat_template(msgs, tokenize=False,
                                                                             add_generation_prompt=gp)
