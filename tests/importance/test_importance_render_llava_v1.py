"""``chat_format: llava-v1``: LLaVA-1.5's conversation format exactly as the PreSel authors' scoring renders it
(conv_vicuna_v1 + preprocess_v1 of haotian-liu/LLaVA): system prompt, ``USER: ... ASSISTANT: ...``, every
reply closed by a labelled ``</s>``; the no-question variant as their remove_instruction.py builds it."""

import copy

import pytest

from presel.errors import PreselError
from presel.records import Turn

torch = pytest.importorskip("torch")

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
Q1, A1 = "<image>\nWhat colour is the background?", "It is red."
Q2, A2 = "Is there a white box?", "Yes, one."
TWO_TURNS = (Turn("user", Q1), Turn("assistant", A1), Turn("user", Q2), Turn("assistant", A2))
IMG = "<image>" * 16  # the tiny model: 32 px / 8 px patches, CLS dropped


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    return Image.new("RGB", (50, 37), (200, 20, 20))


@pytest.fixture(scope="module")
def vicuna_proc(tiny_loaded):
    """The tiny processor with Vicuna's end-of-sequence token ``</s>`` (rendering only: no forward pass)."""
    proc = copy.deepcopy(tiny_loaded[1])
    proc.tokenizer.add_special_tokens({"eos_token": "</s>"})
    return proc


def _expected(tok, segs):
    ids, labels = [], []
    for text, resp in segs:
        part = tok(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if resp else [-100] * len(part)
    return ids, labels


def test_two_turns_token_for_token(vicuna_proc, image):
    from presel.vlm.render import encode_conversation, with_chat_format

    tok = vicuna_proc.tokenizer
    enc = encode_conversation(with_chat_format(vicuna_proc, "llava-v1"), image, TWO_TURNS)
    # the authors' prompt: system + sep " ", "USER: " + "<image>\n" + question + " ", "ASSISTANT: " + reply + "</s>", ...
    want = (SYSTEM + " USER: " + IMG + "\nWhat colour is the background? ASSISTANT: It is red.</s>"
            "USER: Is there a white box? ASSISTANT: Yes, one.</s>")
    assert tok.decode(enc.input_ids) == want
    ids, labels = _expected(tok, [
        (SYSTEM + " USER: " + IMG + "\nWhat colour is the background? ASSISTANT:", False),
        (" It is red.", True), ("</s>", True),
        ("USER: Is there a white box? ASSISTANT:", False),
        (" Yes, one.", True), ("</s>", True)])
    assert enc.input_ids.tolist() == ids
    assert enc.labels.tolist() == labels
    eos = tok.convert_tokens_to_ids("</s>")
    assert [i for i, x in enumerate(enc.labels.tolist()) if x == eos] == [i for i, x in enumerate(ids) if x == eos]
    assert len([x for x in enc.labels.tolist() if x == eos]) == 2  # both </s> labelled
    assert enc.end_of_turn


def test_no_question_variant_joins_replies(vicuna_proc, image):
    from presel.vlm.render import encode_conversation, encode_pair, with_chat_format

    tok = vicuna_proc.tokenizer
    proc = with_chat_format(vicuna_proc, "llava-v1")
    enc = encode_conversation(proc, image, TWO_TURNS, drop_question=True)
    # remove_instruction.py: the human turn is just "<image>", the gpt replies joined with one space
    assert tok.decode(enc.input_ids) == SYSTEM + " USER: " + IMG + " ASSISTANT: It is red. Yes, one.</s>"
    ids, labels = _expected(tok, [(SYSTEM + " USER: " + IMG + " ASSISTANT:", False),
                                  (" It is red. Yes, one.", True), ("</s>", True)])
    assert enc.input_ids.tolist() == ids and enc.labels.tolist() == labels
    q, noq = encode_pair(proc, image, TWO_TURNS)  # the batched path renders the same
    assert noq.input_ids.tolist() == ids and noq.labels.tolist() == labels
    assert q.labels.tolist() == encode_conversation(proc, image, TWO_TURNS).labels.tolist()


def test_render_llava_v1_text_rules():
    from presel.vlm.render import render_llava_v1

    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  Q?  "}]}
    bot = {"role": "assistant", "content": [{"type": "text", "text": "A"}]}
    assert render_llava_v1([user, bot]) == SYSTEM + " USER: <image>\nQ? ASSISTANT: A</s>"
    assert render_llava_v1([user], add_generation_prompt=True) == SYSTEM + " USER: <image>\nQ? ASSISTANT:"
    sys_msg = {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert render_llava_v1([sys_msg, user, bot]) == "Be brief. USER: <image>\nQ? ASSISTANT: A</s>"


def test_model_template_is_the_default_and_unknown_format_is_an_error(tiny_loaded):
    from presel.vlm.render import with_chat_format

    proc = tiny_loaded[1]
    assert with_chat_format(proc, None) is proc
    with pytest.raises(PreselError, match="chat_format='vicuna' must be one of llava-v1"):
        with_chat_format(proc, "vicuna")


def test_template_without_end_of_turn_is_flagged(tiny_loaded, image):
    from presel.vlm.render import encode_conversation

    proc = copy.deepcopy(tiny_loaded[1])
    # a template that writes no end-of-turn token after the reply (as llava-hf's LLaVA-1.5 template labels none)
    proc.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}"
                          "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}{% endfor %}\n"
                          "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    enc = encode_conversation(proc, image, TWO_TURNS)
    assert not enc.end_of_turn
    assert enc.n_response_tokens > 0
