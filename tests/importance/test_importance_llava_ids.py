"""``chat_format: llava-v1`` input ids and labels exactly as haotian-liu/LLaVA builds them, on a small LLaMA-style
tokenizer (SentencePiece-style ``▁`` pre-tokenizer, BOS added, built here offline).

The reference below is an independent re-statement of LLaVA's construction written for this test (not presel's
code and not LLaVA's): ``preprocess_multimodal`` (the ``<image>`` turn becomes ``"<image>\\n" + rest.strip()``),
``conv_vicuna_v1.get_prompt()``, ``tokenizer_image_token`` (chunks split on ``<image>`` tokenized one by one, BOS of
the first kept, one image token between), ``preprocess_v1``'s target masking by round and instruction lengths
(``len(...) - 2``, the legacy-tokenizer path), the image expanded in place, then the cut at 2048 tokens
(``tokenizer_model_max_length``)."""

from __future__ import annotations

import copy

import pytest

from presel.records import Turn

torch = pytest.importorskip("torch")

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IGNORE = -100
CORPUS = [SYSTEM, "USER: What colour is the background? ASSISTANT: It is red.", "Is there a white box? Yes, one.",
          "USER: ASSISTANT: red blue green white box background colour one two three the a is there what",
          "\nWhat\n colour\n"] * 20


def _llama_style_tokenizer(prepend_scheme: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<image>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", extra_special_tokens={"image_token": "<image>"})


@pytest.fixture(scope="module", params=["always", "first"], ids=["legacy", "non-legacy"])
def llama_proc(tiny_loaded, request):
    from transformers import LlavaProcessor

    tiny = tiny_loaded[1]
    tok = _llama_style_tokenizer(request.param)
    proc = LlavaProcessor(image_processor=copy.deepcopy(tiny.image_processor), tokenizer=tok,
                          patch_size=tiny.patch_size, vision_feature_select_strategy=tiny.vision_feature_select_strategy,
                          num_additional_image_tokens=getattr(tiny, "num_additional_image_tokens", 0))
    assert proc.image_token_id == tok.convert_tokens_to_ids("<image>")
    return proc, request.param


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    return Image.new("RGB", (50, 37), (200, 20, 20))


def llava_reference(tok, conversations, n_image_tokens, image_id, max_len=2048):
    """LLaVA's (input_ids, labels) for one sample, restated independently (see the module doc)."""
    msgs = []
    for s in conversations:
        v = s["value"]
        if "<image>" in v:
            v = ("<image>\n" + v.replace("<image>", "").strip()).strip()
        msgs.append(("USER" if s["from"] == "human" else "ASSISTANT", v))
    prompt = SYSTEM + " "
    for i, (role, m) in enumerate(msgs):
        prompt += (role + ": " + m + [" ", "</s>"][i % 2]) if m else role + ":"

    def tti(text):
        chunks = [tok(c).input_ids for c in text.split("<image>")]
        out, off = [], 0
        if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
            off = 1
            out.append(chunks[0][0])
        seq = []
        for c in chunks:
            seq += [c, [image_id] * (off + 1)]
        for x in seq[:-1]:
            out.extend(x[off:])
        return out

    ids = tti(prompt)
    labels = list(ids)
    cur = 1
    labels[:cur] = [IGNORE] * cur
    sep = " ASSISTANT: "
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len, instr_len = len(tti(rou)), len(tti(parts[0])) - 2
        labels[cur:cur + instr_len] = [IGNORE] * len(labels[cur:cur + instr_len])
        cur += round_len
    labels[cur:] = [IGNORE] * len(labels[cur:])
    assert cur == len(ids), "LLaVA would mask this whole sample (tokenization mismatch)"
    k = ids.index(image_id)
    ids = ids[:k] + [image_id] * n_image_tokens + ids[k + 1:]
    labels = labels[:k] + [IGNORE] * n_image_tokens + labels[k + 1:]
    return ids[:max_len], labels[:max_len]


TWO_TURNS = [{"from": "human", "value": "What colour is the background?\n<image>"},
             {"from": "gpt", "value": "It is red.\n"},
             {"from": "human", "value": " Is there a white box? "},
             {"from": "gpt", "value": "Yes, one."}]


def _turns(conv):
    return tuple(Turn("user" if s["from"] == "human" else "assistant", s["value"]) for s in conv)


def _n_image(proc, image):
    return int((proc(text=["<image>"], images=[image], return_tensors="pt")["input_ids"] == proc.image_token_id).sum())


def test_two_turns_token_for_token(llama_proc, image):
    from presel.vlm.render import encode_conversation, with_chat_format

    proc, scheme = llama_proc
    tok = proc.tokenizer
    enc = encode_conversation(with_chat_format(proc, "llava-v1"), image, _turns(TWO_TURNS))
    n_img = _n_image(proc, image)
    ids, labels = llava_reference(tok, TWO_TURNS, n_img, proc.image_token_id) if scheme == "always" else (None, None)
    if scheme == "always":  # the legacy path of preprocess_v1 (LLaVA-1.5's slow tokenizer): labels follow its arithmetic
        assert enc.input_ids.tolist() == ids
        assert enc.labels.tolist() == labels
    # the ids are tokenizer_image_token's on any tokenizer: the text after the image tokenized on its own keeps its
    # own leading "▁" (a one-pass tokenization would not), the first chunk's BOS only
    k = enc.input_ids.tolist().index(proc.image_token_id)
    after = tok("\nWhat colour is the background? ASSISTANT: It is red.\n</s>USER:  Is there a white box?  "
                "ASSISTANT: Yes, one.</s>").input_ids[1:]
    assert enc.input_ids.tolist()[k + n_img:] == after
    assert enc.input_ids.tolist()[0] == tok.bos_token_id and enc.input_ids.tolist().count(tok.bos_token_id) == 1
    assert tok.convert_ids_to_tokens(after[0]).startswith("▁")
    if scheme == "first":  # one pass over the whole text (presel before) gives no "▁" after the image token
        one_pass = tok(tok.decode(enc.input_ids[:k + 1].tolist()[1:]) + "\nWhat colour").input_ids
        assert not tok.convert_ids_to_tokens(one_pass[one_pass.index(proc.image_token_id) + 1]).startswith("▁")
    # the reply's trailing newline and both </s> are targets; the non-image user turn is not stripped
    text = tok.decode([t for t in enc.labels.tolist() if t != IGNORE])
    assert "red.\n</s>" in text.replace(" ", "") or "red.\n</s>" in text
    assert text.count("</s>") == 2 and "USER" not in text


def test_no_question_variant(llama_proc, image):
    from presel.vlm.render import encode_pair, with_chat_format

    proc, scheme = llama_proc
    if scheme != "always":
        pytest.skip("the reference follows the legacy path")
    withq, noq = encode_pair(with_chat_format(proc, "llava-v1"), image, _turns(TWO_TURNS))
    n_img = _n_image(proc, image)
    conv = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "It is red.\n Yes, one."}]
    ids, labels = llava_reference(proc.tokenizer, conv, n_img, proc.image_token_id)
    assert noq.input_ids.tolist() == ids and noq.labels.tolist() == labels
    ids, labels = llava_reference(proc.tokenizer, TWO_TURNS, n_img, proc.image_token_id)
    assert withq.input_ids.tolist() == ids and withq.labels.tolist() == labels


def test_cut_at_2048_after_the_image_expansion(llama_proc, image):
    from presel.vlm.render import LLAVA_MAX_LENGTH, encode_conversation, with_chat_format

    proc, scheme = llama_proc
    long_reply = " ".join(["red blue green white box"] * 800)
    conv = [{"from": "human", "value": "<image>\nWhat colour is the background?"}, {"from": "gpt", "value": long_reply}]
    enc = encode_conversation(with_chat_format(proc, "llava-v1"), image, _turns(conv))
    assert LLAVA_MAX_LENGTH == 2048 and len(enc.input_ids) == 2048 and len(enc.labels) == 2048
    if scheme == "always":
        ids, labels = llava_reference(proc.tokenizer, conv, _n_image(proc, image), proc.image_token_id)
        assert enc.input_ids.tolist() == ids and enc.labels.tolist() == labels
    short = encode_conversation(with_chat_format(proc, "llava-v1"), image, _turns(conv), max_length=100)
    assert short.input_ids.tolist() == enc.input_ids.tolist()[:100]
