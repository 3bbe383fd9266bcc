"""Render a conversation about one image into model inputs and response-only labels, for any VLM.

The model's own processor and chat template do the rendering, so any ``AutoModelForImageTextToText``
whose processor has a chat template works (llava-hf LLaVA-1.5, LLaVA-NeXT/OneVision, Qwen2-VL/2.5-VL,
Idefics3/SmolVLM). Tested offline on the ``tiny-llava`` / ``llava-small`` builds and a tiny Qwen2-VL
(M-RoPE, patch-list pixel values, per-token ``mm_token_type_ids``); the others use the same code paths
(batch-dim extras, zero-padded patch counts) but have no offline checkpoint to test against.

Messages: the ``<image>`` placeholder of LLaVA text is removed and the image goes into the first user
message as an image content part (``{"type": "image"}`` before the text). Labels: every token of every
assistant reply plus the end-of-turn token that closes it (``<|im_end|>``, ``</s>``,
``<end_of_utterance>`` ...), as LLaVA's own training labels; everything else is -100.

How response tokens are found: the chat template renders the conversation up to each assistant turn
(with the generation prompt) and through it; the reply starts where the prefix ends and is located
verbatim after it; the end-of-turn token is the first non-blank token the template writes after the
reply inside that turn. Character spans are mapped to tokens through the tokenizer's offset mapping on
the unexpanded text; the processor then expands the image placeholder into the model's image tokens, and
the labels are shifted by the expansion (checked token by token: every token after the image must match).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from presel.errors import PreselError
from presel.records import Turn

IGNORE = -100
IMAGE_PLACEHOLDER = "<image>"


@dataclass
class Encoded:
    """One rendered sample.

    ``input_ids`` and ``labels``: 1-D LongTensors of equal length (labels -100 except response tokens).
    ``extras``: the other processor outputs of this one sample, by name (``pixel_values``, ``image_sizes``,
    ``image_grid_thw``, ``pixel_attention_mask`` ...). Per-token outputs (same length as ``input_ids``, e.g.
    ``token_type_ids``) are stored 1-D; everything else is kept exactly as the processor returns it for a
    one-sample call (LLaVA: ``pixel_values`` 1 x 3 x H x W; Qwen2-VL: patches x dim), so :func:`collate`
    concatenates it along dim 0 (zero-padding other dims where samples differ).
    """

    input_ids: Any
    labels: Any
    extras: dict[str, Any] = field(default_factory=dict)
    end_of_turn: bool = True  # every reply's end-of-turn token is labelled (False: the template writes none)

    @property
    def n_response_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def strip_placeholder(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, "").strip()


def build_messages(turns: Sequence[Turn], *, drop_question: bool = False) -> list[dict[str, Any]]:
    """Chat messages (content-part lists) for ``turns``; the image part opens the first user message.

    ``drop_question``: the user turn holds only the image and all assistant replies are joined with one
    space into one reply (the ``L(R|I)`` pass of PreSel, as the official code). System turns are kept.
    """
    system = [t for t in turns if t.role == "system"]
    msgs: list[dict[str, Any]] = [{"role": "system", "content": [{"type": "text", "text": t.text.strip()}]}
                                  for t in system]
    if drop_question:
        replies = [t.text for t in turns if t.role == "assistant"]
        msgs.append({"role": "user", "content": [{"type": "image"}]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": " ".join(replies)}]})
        return msgs
    image_done = False
    for t in turns:
        if t.role == "system":
            continue
        text = strip_placeholder(t.text) if t.role == "user" else t.text
        parts: list[dict[str, Any]] = []
        if t.role == "user" and not image_done:
            parts.append({"type": "image"})
            image_done = True
        elif t.role == "assistant" and not image_done:  # conversation opens with a reply: image-only user turn
            msgs.append({"role": "user", "content": [{"type": "image"}]})
            image_done = True
        if text or not parts:
            parts.append({"type": "text", "text": text})
        msgs.append({"role": t.role, "content": parts})
    if not image_done:
        msgs.insert(len(system), {"role": "user", "content": [{"type": "image"}]})
    return msgs


def _template(processor: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    """``processor.apply_chat_template(messages, tokenize=False)``. For a plain string template the compiled
    jinja template is rendered directly, as transformers does, without its message normalisation (our
    messages are plain dicts already), which costs more than the rendering."""
    template = getattr(processor, "chat_template", None)
    tok = _tokenizer(processor)
    if isinstance(template, str) and tok is not processor:
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template
        except ImportError:  # pragma: no cover - other transformers versions
            _compile_jinja_template = None
        if _compile_jinja_template is not None:
            return _compile_jinja_template(template).render(
                messages=messages, tools=None, documents=None, add_generation_prompt=generation_prompt,
                **tok.special_tokens_map)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def response_char_spans(processor: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered text and, per assistant message, ``(reply_start, reply_end, turn_end)`` character offsets.

    ``turn_end`` is where the template's rendering of that turn ends (the end-of-turn token lies in
    ``[reply_end, turn_end)``).
    """
    full = _template(processor, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _template(processor, messages[:i], generation_prompt=True)
        through = _template(processor, messages[:i + 1])
        if not full.startswith(through) or not through.startswith(prefix):
            raise PreselError("the model's chat template renders a conversation differently from its prefixes "
                              "(not prefix-stable), so response tokens cannot be located; use a model whose chat "
                              "template renders each turn independently")
        reply = "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text").strip()
        start = full.find(reply, len(prefix)) if reply else len(prefix)
        if start < 0 or start + len(reply) > len(through):
            raise PreselError(f"the model's chat template does not reproduce the assistant reply {reply[:60]!r} "
                              "verbatim, so its tokens cannot be located; use a template that keeps reply text")
        if reply and getattr(processor, "reply_from_prompt_end", False):
            # LLaVA's preprocess_v1 labels everything after "ASSISTANT:", the separating space included
            start, reply = len(prefix), full[len(prefix):start + len(reply)]
        spans.append((start, start + len(reply), len(through)))
    return full, spans


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _image_token_id(processor: Any) -> int | None:
    tid = getattr(processor, "image_token_id", None)
    if tid is None and getattr(processor, "image_token", None):
        tid = _tokenizer(processor).convert_tokens_to_ids(processor.image_token)
    return tid


def _tokenize_with_offsets(tok: Any, text: str, add_special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        enc = backend.encode(text, add_special_tokens=add_special)
        return list(enc.ids), [tuple(o) for o in enc.offsets]
    plain = tok(text, add_special_tokens=add_special, return_offsets_mapping=True)
    return list(plain["input_ids"]), [tuple(o) for o in plain["offset_mapping"]]


@dataclass
class _Plan:
    text: str
    add_special: bool
    plain_ids: list[int]
    keep: list[bool]
    end_of_turn: bool = True


def _plan(processor: Any, turns: Sequence[Turn], drop_question: bool) -> _Plan:
    """Render the text and mark the response tokens of its (unexpanded) tokenization."""
    tok = _tokenizer(processor)
    if not getattr(tok, "is_fast", False):
        raise PreselError(f"{type(tok).__name__} is a slow tokenizer; presel needs a fast (Rust) tokenizer for "
                          "its offset mapping; load the model with a tokenizer.json")
    messages = build_messages(turns, drop_question=drop_question)
    text, spans = response_char_spans(processor, messages)
    bos = getattr(tok, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    plain_ids, offsets = _tokenize_with_offsets(tok, text, add_special)
    keep = [False] * len(plain_ids)
    end_of_turn = True
    for r0, r1, t1 in spans:
        for j, (a, b) in enumerate(offsets):
            if b > a and a < r1 and b > r0:
                keep[j] = True
        found = False
        if text[r1:t1].strip():  # the end-of-turn token: first non-blank token the template writes after the reply
            for j, (a, b) in enumerate(offsets):
                if a >= r1 and b <= t1 and b > a and text[a:b].strip():
                    keep[j] = True
                    found = True
                    break
        end_of_turn = end_of_turn and found
    return _Plan(text, add_special, plain_ids, keep, end_of_turn)


def _finish(processor: Any, plan: _Plan, ids: Any, extras: dict[str, Any], max_length: int | None) -> Encoded:
    """Labels on the expanded ``ids`` (checked against the plan), truncation."""
    import torch

    ids = ids.to(torch.long)
    plain_ids, keep = plan.plain_ids, plan.keep
    delta = len(ids) - len(plain_ids)
    first = next((j for j, k in enumerate(keep) if k), len(keep))
    if delta < 0 or ids[first + delta:].tolist() != plain_ids[first:]:
        raise PreselError("the processor's image expansion changed tokens after the image (or the text tokenizes "
                          "differently with the image); cannot align response labels for this model")
    labels = torch.full_like(ids, IGNORE)
    idx = torch.tensor([j + delta for j, k in enumerate(keep) if k], dtype=torch.long)
    if len(idx):
        labels[idx] = ids[idx]
    n = len(ids)
    if max_length is not None and n > max_length:
        img_id = _image_token_id(processor)
        if img_id is not None:
            pos = (ids == img_id).nonzero()
            if len(pos) and int(pos[-1]) >= max_length:
                raise PreselError(f"max_length={max_length} would cut the image tokens (they end at position "
                                  f"{int(pos[-1]) + 1}); raise max_length")
        ids, labels = ids[:max_length], labels[:max_length]
        extras = {k: (v[:max_length] if v.dim() == 1 and v.shape[0] == n else v) for k, v in extras.items()}
    return Encoded(ids, labels, extras, plan.end_of_turn)


def _split_extras(out: Any, row: int, n_rows: int, tokens: Any) -> dict[str, Any] | None:
    """Row ``row`` of a batched processor output's extras (``tokens``: that row's non-pad positions), or None
    when a key's layout is not recognised."""
    import torch

    extras: dict[str, Any] = {}
    grid = out.get("image_grid_thw")
    for k, v in out.items():
        if k in ("input_ids", "attention_mask") or not isinstance(v, torch.Tensor):
            continue
        if v.dim() == 2 and v.shape[0] == n_rows and v.shape[1] == out["input_ids"].shape[1]:
            extras[k] = v[row][tokens]  # per-token
        elif k == "pixel_values" and grid is not None and len(grid) == n_rows:  # Qwen2-VL: patches of all images
            sizes = [int(torch.prod(g)) for g in grid]
            if sum(sizes) != v.shape[0]:
                return None
            start = sum(sizes[:row])
            extras[k] = v[start:start + sizes[row]]
        elif v.shape[0] == n_rows:
            extras[k] = v[row:row + 1]
        else:
            return None
    return extras


def encode_conversation(processor: Any, image: Any, turns: Sequence[Turn], *, drop_question: bool = False,
                        max_length: int | None = None) -> Encoded:
    """Render ``turns`` about ``image`` (a PIL image) with the model's processor and chat template.

    Labels cover every assistant reply plus its end-of-turn token. ``drop_question``: the ``L(R|I)``
    rendering (image-only user turn, replies joined with one space). ``max_length``: truncate on the right
    (never inside the image tokens; a limit that would cut them is an error).
    """
    import torch

    if _is_llava_v1(processor):
        return encode_llava_v1(processor, image, turns, drop_question=drop_question, max_length=max_length)
    plan = _plan(processor, turns, drop_question)
    out = processor(text=[plan.text], images=[image], return_tensors="pt", add_special_tokens=plan.add_special)
    ids = out["input_ids"][0]
    n = len(ids)
    extras: dict[str, Any] = {}
    for k, v in out.items():
        if k in ("input_ids", "attention_mask") or not isinstance(v, torch.Tensor):
            continue
        extras[k] = v[0] if v.dim() == 2 and v.shape[0] == 1 and v.shape[1] == n else v
    return _finish(processor, plan, ids, extras, max_length)


def _splice(q_plain: list[int], q_ids: list[int], other_plain: list[int], image_token: int | None) -> list[int] | None:
    """``other_plain`` with its image placeholder expanded exactly as the processor expanded ``q_plain`` into
    ``q_ids``, or None unless the expansion replaced the one ``image_token`` of ``q_plain`` by a run of tokens,
    leaving every other token unchanged, and ``other_plain`` has the same tokens up to its placeholder."""
    if image_token is None or q_plain.count(image_token) != 1 or other_plain.count(image_token) != 1:
        return None
    k = q_plain.index(image_token)
    delta = len(q_ids) - len(q_plain)
    if delta < 0 or q_ids[:k] != q_plain[:k] or q_ids[k + delta + 1:] != q_plain[k + 1:]:
        return None
    if other_plain[:k + 1] != q_plain[:k + 1]:
        return None
    return other_plain[:k] + q_ids[k:k + delta + 1] + other_plain[k + 1:]


def encode_pair(processor: Any, image: Any, turns: Sequence[Turn], *, max_length: int | None = None
                ) -> tuple[Encoded, Encoded]:
    """Both renderings of one sample, ``(with question, without question)``, processing the image once.

    Equal to two :func:`encode_conversation` calls (``drop_question`` False, True): the no-question text gets
    the same image-token expansion as the processor gave the question text (checked token by token) and
    shares its image tensors; processors whose expansion cannot be reproduced that way get one batched
    processor call or two separate calls.
    """
    import torch

    if _is_llava_v1(processor):
        run = _llava_image_run(processor, image)
        return (encode_llava_v1(processor, image, turns, max_length=max_length, image_run=run),
                encode_llava_v1(processor, image, turns, drop_question=True, max_length=max_length, image_run=run))
    plans = [_plan(processor, turns, False), _plan(processor, turns, True)]
    if plans[0].add_special == plans[1].add_special:
        out = processor(text=[plans[0].text], images=[image], return_tensors="pt",
                        add_special_tokens=plans[0].add_special)
        ids = out["input_ids"][0]
        n = len(ids)
        extras = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and isinstance(v, torch.Tensor)}
        if not any(v.dim() == 2 and v.shape[0] == 1 and v.shape[1] == n for v in extras.values()):  # no per-token extras
            other = _splice(plans[0].plain_ids, ids.tolist(), plans[1].plain_ids, _image_token_id(processor))
            if other is not None:
                return (_finish(processor, plans[0], ids, extras, max_length),
                        _finish(processor, plans[1], torch.tensor(other, dtype=torch.long), dict(extras), max_length))
        out = processor(text=[p.text for p in plans], images=[image, image], return_tensors="pt", padding=True,
                        add_special_tokens=plans[0].add_special)
        mask = out.get("attention_mask")
        if mask is not None and out["input_ids"].shape[0] == 2:
            res = []
            for i, p in enumerate(plans):
                tokens = mask[i].bool()
                split = _split_extras(out, i, 2, tokens)
                if split is None:
                    break
                res.append(_finish(processor, p, out["input_ids"][i][tokens], split, max_length))
            if len(res) == 2:
                return res[0], res[1]
    return (encode_conversation(processor, image, turns, max_length=max_length),
            encode_conversation(processor, image, turns, drop_question=True, max_length=max_length))


def encode_pairs(processor: Any, images: Sequence[Any], turns: Sequence[Sequence[Turn]], *,
                 max_length: int | None = None) -> list[tuple[Encoded, Encoded] | PreselError]:
    """:func:`encode_pair` for several samples with one processor call for all their images (the processor's
    fixed cost per call dominates small images). A sample that cannot be rendered gets its
    :class:`PreselError` in its place. Equal to per-sample :func:`encode_pair` (which it falls back to when
    the batched output cannot be split or the image expansion cannot be reused)."""
    import torch

    if _is_llava_v1(processor):
        res: list[tuple[Encoded, Encoded] | PreselError] = []
        for im, t in zip(images, turns):
            try:
                res.append(encode_pair(processor, im, t, max_length=max_length))
            except PreselError as e:
                res.append(e)
        return res
    out_list: list[tuple[Encoded, Encoded] | PreselError | None] = [None] * len(images)
    plans: list[tuple[int, _Plan, _Plan]] = []
    for i, t in enumerate(turns):
        try:
            plans.append((i, _plan(processor, t, False), _plan(processor, t, True)))
        except PreselError as e:
            out_list[i] = e
    img_tok = _image_token_id(processor)
    batched = [p for p in plans if p[1].add_special == p[2].add_special == plans[0][1].add_special]
    if len(batched) > 1:
        out = processor(text=[p[1].text for p in batched], images=[images[p[0]] for p in batched],
                        return_tensors="pt", padding=True, add_special_tokens=batched[0][1].add_special)
        mask = out.get("attention_mask")
        for row, (i, pq, pn) in enumerate(batched):
            if mask is None:
                break
            tokens = mask[row].bool()
            extras = _split_extras(out, row, len(batched), tokens)
            if extras is None or any(v.dim() == 1 for v in extras.values()):  # unknown layout / per-token extras
                break
            ids = out["input_ids"][row][tokens]
            other = _splice(pq.plain_ids, ids.tolist(), pn.plain_ids, img_tok)
            if other is None:
                continue
            try:
                out_list[i] = (_finish(processor, pq, ids, extras, max_length),
                               _finish(processor, pn, torch.tensor(other, dtype=torch.long), dict(extras), max_length))
            except PreselError as e:
                out_list[i] = e
    for i, res in enumerate(out_list):
        if res is None:
            try:
                out_list[i] = encode_pair(processor, images[i], turns[i], max_length=max_length)
            except PreselError as e:
                out_list[i] = e
    return out_list  # type: ignore[return-value]


def _is_token_aligned(e: Encoded, v: Any) -> bool:
    return v.dim() == 1 and v.shape[0] == e.input_ids.shape[0]


def collate(batch: list[Encoded], pad_token_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad a list of :class:`Encoded` into a batch.

    Returns ``{"input_ids", "attention_mask", "labels", "extras"}`` (B x L tensors; labels -100 on padding;
    ``extras``: per-token extras padded with 0, the others concatenated along dim 0 with zero padding of
    the remaining dims). Use right padding for scoring/training (position ids of most decoders assume it).
    """
    import torch

    if not batch:
        raise ValueError("collate needs at least one sample")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r} must be 'right' or 'left'")
    L = max(int(e.input_ids.shape[0]) for e in batch)
    B = len(batch)
    input_ids = torch.full((B, L), int(pad_token_id), dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)

    def put(dst: Any, i: int, src: Any) -> None:
        n = src.shape[0]
        if padding_side == "right":
            dst[i, :n] = src
        else:
            dst[i, L - n:] = src

    for i, e in enumerate(batch):
        put(input_ids, i, e.input_ids)
        put(attention, i, torch.ones_like(e.input_ids))
        put(labels, i, e.labels)
    extras: dict[str, Any] = {}
    for k in batch[0].extras:
        vals = [e.extras[k] for e in batch]
        if all(_is_token_aligned(e, e.extras[k]) for e in batch):
            t = torch.zeros((B, L), dtype=vals[0].dtype)
            for i, v in enumerate(vals):
                put(t, i, v)
            extras[k] = t
            continue
        shape = [max(int(v.shape[d]) for v in vals) for d in range(1, vals[0].dim())]
        padded = []
        for v in vals:
            if list(v.shape[1:]) != shape:
                p = torch.zeros((v.shape[0], *shape), dtype=v.dtype)
                p[tuple(slice(0, s) for s in v.shape)] = v
                v = p
            padded.append(v)
        extras[k] = torch.cat(padded, dim=0)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "extras": extras}


def response_loss(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Per-sample sum of next-token cross-entropy over response tokens, and their count.

    ``logits``: B x L x V (any float dtype; computed in fp32); ``labels``: B x L with -100 where masked.
    Position ``t`` predicts label ``t + 1``. Returns ``(loss_sum, n_tokens)``: fp32 ``B`` and long ``B``;
    the mean loss of sample ``i`` is ``loss_sum[i] / n_tokens[i]``. Differentiable (used by training).
    """
    import torch
    import torch.nn.functional as F

    shift_labels = labels[:, 1:].to(logits.device)
    mask = shift_labels != IGNORE
    rows = logits[:, :-1][mask].float()
    nll = F.cross_entropy(rows, shift_labels[mask], reduction="none")
    which = mask.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device).index_add(0, which, nll)
    return sums, mask.sum(dim=1)


# ---------------------------------------------------------------------------------------------------------
# named chat formats (instead of the model's own chat template)

CHAT_FORMATS = ("llava-v1",)
# LLaVA-1.5's default conversation, ``conv_vicuna_v1`` in llava/conversation.py of haotian-liu/LLaVA
LLAVA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def check_chat_format(value: object) -> str | None:
    if value is not None and value not in CHAT_FORMATS:
        raise PreselError(f"chat_format={value!r} must be one of {', '.join(CHAT_FORMATS)} or unset (the model's own "
                          "chat template)")
    return value  # type: ignore[return-value]


def _text_of(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p.get("type") == "text")


def render_llava_v1(messages: Sequence[dict[str, Any]], *, image_token: str = IMAGE_PLACEHOLDER, eos: str = "</s>",
                    add_generation_prompt: bool = False) -> str:
    """LLaVA-1.5's conversation format (Vicuna v1, ``SeparatorStyle.TWO``), as its training code renders a sample
    (``conv_vicuna_v1`` in llava/conversation.py, ``preprocess_multimodal``/``preprocess_v1`` in
    llava/train/train.py of haotian-liu/LLaVA; the PreSel authors score with the same code).

    ``SYSTEM USER: <image>\\nQ1 ASSISTANT: R1</s>USER: Q2 ASSISTANT: R2</s>``: the system prompt (a leading system
    message replaces the default), then each message as ``ROLE: text`` followed by the separator of its position
    (``" "`` after even, ``eos`` after odd positions); an empty message is ``ROLE:`` alone. The image opens its user
    message as ``<image>\\n`` before the stripped text (just ``<image>`` when there is no text). With
    ``add_generation_prompt`` the text ends in ``ASSISTANT:``.
    """
    msgs = list(messages)
    system = LLAVA_V1_SYSTEM
    if msgs and msgs[0]["role"] == "system":
        system = _text_of(msgs[0]).strip()
        msgs = msgs[1:]
    seps = (" ", eos)
    out = system + seps[0]
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            role = "USER"
            text = _text_of(m).strip()
            if any(p.get("type") == "image" for p in m["content"]):
                text = (image_token + "\n" + text).strip()
        else:
            role = "ASSISTANT"
            text = _text_of(m)
        out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
    if add_generation_prompt:
        out += "ASSISTANT:"
    return out


class _ChatFormat:
    """A processor that renders conversations in a named chat format; everything else is the wrapped processor's."""

    chat_template = None  # :func:`_template` then calls :meth:`apply_chat_template`
    reply_from_prompt_end = True  # labels start right after "ASSISTANT:", as LLaVA's preprocess_v1 masks

    def __init__(self, processor: Any, name: str):
        self._processor = processor
        self.chat_format = name
        tok = _tokenizer(processor)
        self._eos = getattr(tok, "eos_token", None) or "</s>"
        self._image_token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER

    def __getattr__(self, name: str) -> Any:
        if name == "_processor":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self._processor, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._processor(*args, **kwargs)

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = False, **_: Any) -> str:
        return render_llava_v1(messages, image_token=self._image_token, eos=self._eos,
                               add_generation_prompt=add_generation_prompt)


def with_chat_format(processor: Any, name: str | None) -> Any:
    """``processor`` rendering in chat format ``name`` (``llava-v1``), or ``processor`` itself for None (the model's
    own chat template). ``llava-v1`` closes each reply with the tokenizer's end-of-sequence token (``</s>`` for
    Vicuna / LLaVA-1.5, as LLaVA's ``sep2``)."""
    check_chat_format(name)
    if name is None:
        return processor
    if isinstance(processor, _ChatFormat):
        processor = processor._processor
    return _ChatFormat(processor, name)


# ---------------------------------------------------------------------------------------------------------
# llava-v1 token ids exactly as LLaVA builds them (haotian-liu/LLaVA: preprocess_multimodal and preprocess_v1 in
# llava/train/train.py, tokenizer_image_token in llava/mm_utils.py, the cut in prepare_inputs_labels_for_multimodal)

LLAVA_MAX_LENGTH = 2048  # LLaVA-1.5's tokenizer_model_max_length: the cut after the image is expanded
LLAVA_V1_ASSISTANT_SEP = " ASSISTANT: "


def llava_v1_messages(turns: Sequence[Turn], *, drop_question: bool = False) -> tuple[str, list[tuple[str, str]]]:
    """``(system, [(role, message), ...])`` as LLaVA's ``preprocess_multimodal`` hands a sample to ``conv_vicuna_v1``.

    The user turn holding ``<image>`` becomes ``"<image>\\n" + rest.strip()``, stripped; every other message is kept
    verbatim (no strip: a trailing newline of a reply stays, as in LLaVA). Without a placeholder the image opens the
    first user turn (presel's rule for pools without one); a conversation opening with a reply gets an image-only
    user turn first. ``drop_question``: ``USER: <image>`` and the replies joined by one space (the authors'
    remove_instruction.py). A leading system turn replaces the default system prompt.
    """
    system = LLAVA_V1_SYSTEM
    sys_turns = [t for t in turns if t.role == "system"]
    if sys_turns:
        system = sys_turns[0].text.strip()
    body = [t for t in turns if t.role != "system"]
    if drop_question:
        return system, [("USER", IMAGE_PLACEHOLDER), ("ASSISTANT", " ".join(t.text for t in body if t.role == "assistant"))]
    holder = next((i for i, t in enumerate(body) if t.role == "user" and IMAGE_PLACEHOLDER in t.text), None)
    if holder is None:
        holder = next((i for i, t in enumerate(body) if t.role == "user"), None)
    msgs: list[tuple[str, str]] = []
    if not body or body[0].role != "user":
        msgs.append(("USER", IMAGE_PLACEHOLDER))
        holder = -1
    for i, t in enumerate(body):
        role = "USER" if t.role == "user" else "ASSISTANT"
        text = t.text
        if i == holder:
            text = (IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()).strip()
        elif IMAGE_PLACEHOLDER in text:
            text = text.replace(IMAGE_PLACEHOLDER, "")
        if msgs and msgs[-1][0] == role:
            raise PreselError(f"chat_format llava-v1 needs alternating user/assistant turns (LLaVA asserts it); turn {i + 1} "
                              f"is a second {t.role} turn in a row: merge them in the pool")
        msgs.append((role, text))
    return system, msgs


def llava_v1_prompt(system: str, msgs: Sequence[tuple[str, str]], eos: str = "</s>") -> str:
    """``conv_vicuna_v1.get_prompt()`` (``SeparatorStyle.TWO``): system, then ``ROLE: message`` + ``" "`` / ``eos``
    alternately; an empty message is ``ROLE:`` alone."""
    seps = (" ", eos)
    out = system + seps[0]
    for i, (role, m) in enumerate(msgs):
        out += f"{role}: {m}{seps[i % 2]}" if m else f"{role}:"
    return out


def _chunk_ids(tok: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tok(text, return_offsets_mapping=True)  # special tokens as the tokenizer adds them (LLaMA: BOS)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def llava_v1_token_ids(tok: Any, prompt: str, image_token_id: int) -> tuple[list[int], list[tuple[int, int]]]:
    """``tokenizer_image_token(prompt)``: each ``<image>``-separated chunk tokenized on its own (so the text after
    the image keeps its own leading ``▁``), the first chunk's BOS kept and the others' dropped, one image token
    between chunks. Also the character span in ``prompt`` of each id (``(-1, -1)`` for BOS and the image)."""
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    offset = 0
    base = 0
    for k, chunk in enumerate(prompt.split(IMAGE_PLACEHOLDER)):
        cids, offs = _chunk_ids(tok, chunk)
        if k == 0 and cids and cids[0] == getattr(tok, "bos_token_id", None):
            offset = 1
            ids.append(cids[0])
            spans.append((-1, -1))
        if k:
            ids.append(image_token_id)
            spans.append((-1, -1))
        for t, (a, b) in zip(cids[offset:], offs[offset:]):
            ids.append(t)
            spans.append((base + a, base + b) if b > a else (-1, -1))
        base += len(chunk) + len(IMAGE_PLACEHOLDER)
    return ids, spans


def llava_v1_label_spans(prompt: str, eos: str) -> list[tuple[int, int]]:
    """Character ranges ``preprocess_v1`` keeps as targets: per round (the prompt split on ``eos``), everything
    after ``" ASSISTANT:"`` through the closing ``eos``."""
    out = []
    pos = 0
    for rou in prompt.split(eos):
        if rou == "":
            break
        parts = rou.split(LLAVA_V1_ASSISTANT_SEP)
        if len(parts) != 2:
            break
        start = pos + len(parts[0]) + len(LLAVA_V1_ASSISTANT_SEP) - 1  # the space after "ASSISTANT:" is the reply's
        end = pos + len(rou) + len(eos)
        out.append((start, min(end, len(prompt))))
        pos += len(rou) + len(eos)
    return out


def _llava_image_run(processor: Any, image: Any) -> tuple[list[int], dict[str, Any]]:
    """The image tokens the processor expands one image into, and its tensors (pixel values ...)."""
    import torch

    img_id = _image_token_id(processor)
    token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
    if img_id is None:
        raise PreselError("chat_format llava-v1 needs a processor with an image token (LLaVA-style models)")
    out = processor(text=[token], images=[image], return_tensors="pt", add_special_tokens=False)
    ids = out["input_ids"][0].tolist()
    run = [t for t in ids if t == img_id]
    n = len(ids)
    extras = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and isinstance(v, torch.Tensor)}
    if not run or ids != run or any(v.dim() == 2 and v.shape[0] == 1 and v.shape[1] == n for v in extras.values()):
        raise PreselError("chat_format llava-v1 expands the image into a run of image tokens as LLaVA-1.5 does; this "
                          "processor expands it differently: leave chat_format unset (the model's own template)")
    return run, extras


def encode_llava_v1(processor: Any, image: Any, turns: Sequence[Turn], *, drop_question: bool = False,
                    max_length: int | None = None, image_run: tuple[list[int], dict[str, Any]] | None = None) -> Encoded:
    """One sample in chat format ``llava-v1`` with LLaVA's own token ids and labels.

    ids: :func:`llava_v1_token_ids` of :func:`llava_v1_prompt`, the image token expanded by the processor; labels:
    the tokens inside :func:`llava_v1_label_spans` (every reply from the space after ``ASSISTANT:``, a trailing
    newline included, and its ``</s>``); then both cut at ``max_length`` (default 2048, LLaVA-1.5's
    ``tokenizer_model_max_length``, counted after the image expansion; a cut inside the image is an error).
    """
    import torch

    tok = _tokenizer(processor)
    eos = getattr(processor, "_eos", None) or getattr(tok, "eos_token", None) or "</s>"
    system, msgs = llava_v1_messages(turns, drop_question=drop_question)
    prompt = llava_v1_prompt(system, msgs, eos)
    run, extras = image_run if image_run is not None else _llava_image_run(processor, image)
    img_id = run[0]
    ids, spans = llava_v1_token_ids(tok, prompt, img_id)
    keep = llava_v1_label_spans(prompt, eos)
    labels = [t if a >= 0 and any(a < r1 and b > r0 for r0, r1 in keep) else IGNORE for t, (a, b) in zip(ids, spans)]
    k = ids.index(img_id)
    ids = ids[:k] + run + ids[k + 1:]
    labels = labels[:k] + [IGNORE] * len(run) + labels[k + 1:]
    limit = LLAVA_MAX_LENGTH if max_length is None else max_length
    if len(ids) > limit:
        if k + len(run) > limit:
            raise PreselError(f"max_length={limit} would cut the image tokens (they end at position {k + len(run)}); "
                              "raise max_length")
        ids, labels = ids[:limit], labels[:limit]
    return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), dict(extras), True)


def _is_llava_v1(processor: Any) -> bool:
    return isinstance(processor, _ChatFormat) and processor.chat_format == "llava-v1"


# ---------------------------------------------------------------------------------------------------------
# images as LLaVA-1.5 opens them (chat_format llava-v1): Image.open(...).convert('RGB'); training pads to square

def load_image_llava(locator: str) -> Any:
    """The image at ``locator`` as LLaVA's dataset opens it: ``Image.open(...).convert("RGB")`` (alpha dropped, not
    composited; EXIF orientation not applied). :class:`presel.features.images.ImageRejected` when it cannot be used."""
    import io

    from PIL import Image, UnidentifiedImageError

    from presel.features.images import ImageRejected
    from presel.io.sources import read_bytes

    data = read_bytes(locator)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageRejected(f"corrupt: {e}") from None


def load_image_for(processor: Any, locator: str) -> Any:
    """The image for ``processor``: LLaVA's opening under chat format ``llava-v1``, else presel's
    (:func:`presel.io.sources.load_image`: alpha composited on white, EXIF orientation applied)."""
    if _is_llava_v1(processor):
        return load_image_llava(locator)
    from presel.io.sources import load_image

    return load_image(locator)


def expand2square(img: Any, background: tuple[int, ...]) -> Any:
    """LLaVA's ``expand2square``: the image centred on a square of its longer side filled with ``background``."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, 0) if w < h else (0, (side - h) // 2))
    return out


def training_image(processor: Any, img: Any) -> Any:
    """The image as fine-tuning feeds it: under ``llava-v1`` LLaVA-1.5's ``image_aspect_ratio pad`` (padded to a
    square with the processor's mean colour, ``int(m * 255)``), else unchanged (the processor's own resizing, as
    scoring, which LLaVA calls ``square``)."""
    if not _is_llava_v1(processor):
        return img
    mean = getattr(getattr(processor, "image_processor", None), "image_mean", None) or (0.5, 0.5, 0.5)
    return expand2square(img, tuple(int(x * 255) for x in mean))
