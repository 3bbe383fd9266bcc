"""``presel evaluate``: per-task exact-match accuracy of a (fine-tuned) VLM on held-out questions.

The held-out file is LLaVA JSON/JSONL with a ``task`` field: each record's first user turn is
the question and its first assistant turn the exact answer. The model answers greedily; an
answer counts as correct when it equals the reference after normalisation (case, surrounding
whitespace and punctuation, a leading "the"/"a").

With ``answer_nll`` (default on) each question is also scored by its *answer loss*: the mean
negative log-likelihood of the reference answer's tokens (and the end-of-turn token, as training
and IRS scoring render them) given the image and the question. It is continuous, so far less
noisy than exact match on a few hundred questions; lower is better.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.io.paths import ImagePathRefused

_PUNCT = re.compile(r"^[\s\"'`.,:;!?()\[\]]+|[\s\"'`.,:;!?()\[\]]+$")


def normalize_answer(text: str) -> str:
    t = _PUNCT.sub("", text.strip().lower())
    t = re.sub(r"^(the|a|an)\s+", "", t)
    return re.sub(r"\s+", " ", t)


@dataclass
class EvalConfig:
    batch_size: int = 8
    max_new_tokens: int = 16
    limit_per_task: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    answer_nll: bool = True
    # generation stops this many tokens after the reference answer's length (its tokens plus the end-of-turn
    # token): room for a leading article or trailing punctuation that normalisation removes; None: max_new_tokens
    answer_slack: int | None = 3

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise PreselError(f"batch_size={self.batch_size} must be >= 1")
        if self.max_new_tokens < 1:
            raise PreselError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.limit_per_task is not None and self.limit_per_task < 1:
            raise PreselError(f"limit_per_task={self.limit_per_task} must be >= 1 (or unset)")
        if self.answer_slack is not None and self.answer_slack < 0:
            raise PreselError(f"answer_slack={self.answer_slack} must be >= 0 (or unset)")


def load_questions(data: str | Path, limit_per_task: int | None = None) -> tuple[list[dict[str, Any]], Path]:
    """(question records, image root) from a held-out LLaVA file; records need a task."""
    from presel.io.manifest import read_pool

    pool = read_pool(data, default_task=None, flag="--data", task_fix="give each record a 'task' field")
    per_task: dict[str, int] = defaultdict(int)
    out = []
    for r in pool.records:
        conv = r.conversations or ()
        q = next((t.text for t in conv if t.role == "user"), None)
        a = next((t.text for t in conv if t.role == "assistant"), None)
        if q is None or a is None:
            raise PreselError(f"{data} record {r.line}: id '{r.id}' needs a user question and an assistant answer")
        if limit_per_task is not None and per_task[r.task] >= limit_per_task:
            continue
        per_task[r.task] += 1
        try:
            image = pool.image_path(r)
        except ImagePathRefused as e:
            raise PreselError(f"{data} record {r.line}: id '{r.id}': {e}") from None
        out.append({"id": r.id, "task": r.task, "image": image, "question": q.replace("<image>", "").strip(),
                    "answer": a})
    return out, pool.image_root


def _prompt_text(processor: Any, question: str) -> str:
    """The question rendered exactly as training and scoring render a user turn, plus the generation prompt."""
    from presel.records import Turn
    from presel.vlm.render import _template, build_messages

    return _template(processor, build_messages([Turn("user", question)]), generation_prompt=True)


def evaluate_model(model: str | Path, data: str | Path, config: EvalConfig | None = None,
                   *, progress: bool = True, image_features: str | Path | None = None) -> dict[str, Any]:
    """Answer every held-out question; return per-task and overall exact-match accuracy (and answer NLL).

    ``image_features``: a folder for the frozen vision tower's outputs (:mod:`presel.vlm.image_features`);
    with it, a LLaVA-style model encodes each image once across all the models evaluated with that folder,
    and each batch runs one forward pass for both the answer NLL and the start of generation.
    """
    import torch
    from PIL import Image

    from presel.vlm.load import load_vlm

    config = config or EvalConfig()
    questions, _ = load_questions(data, config.limit_per_task)
    vlm, processor = load_vlm(model, dtype=config.dtype, device=config.device)
    vlm.eval()
    if image_features is not None:
        from presel.vlm.image_features import ImageFeatures, supports

        if supports(vlm):
            feats = ImageFeatures(vlm, processor, image_features)
            return summarize(_evaluate_cached(vlm, processor, questions, config, feats, progress=progress))
    tok = getattr(processor, "tokenizer", processor)
    old_side = tok.padding_side
    tok.padding_side = "left"
    device = next(vlm.parameters()).device
    predictions: list[dict[str, Any]] = []
    iterator = range(0, len(questions), config.batch_size)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="evaluate", unit="batch")
    scorer = None
    if config.answer_nll:
        from presel.importance.scoring import Scorer

        scorer = Scorer(str(model), loaded=(vlm, processor))
    try:
        for start in iterator:
            batch = questions[start:start + config.batch_size]
            images = []
            for q in batch:
                with Image.open(q["image"]) as im:
                    images.append(im.convert("RGB"))
            nll = answer_nll(scorer, images, batch) if scorer is not None else [None] * len(batch)
            texts = [_prompt_text(processor, q["question"]) for q in batch]
            inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
            inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
            if "pixel_values" in inputs and vlm.dtype != torch.float32:
                inputs["pixel_values"] = inputs["pixel_values"].to(vlm.dtype)
            caps = [_cap(config, len(tok(q["answer"], add_special_tokens=False)["input_ids"]) + 1) for q in batch]
            with torch.inference_mode():
                out = vlm.generate(**inputs, max_new_tokens=max(caps), do_sample=False,
                                   pad_token_id=tok.pad_token_id)
            new_tokens = out[:, inputs["input_ids"].shape[1]:]
            answers = [tok.decode(row[:c], skip_special_tokens=True) for row, c in zip(new_tokens, caps)]
            for q, pred, loss in zip(batch, answers, nll):
                pred = pred.strip()
                predictions.append({"id": q["id"], "task": q["task"], "answer": q["answer"], "prediction": pred,
                                    "correct": normalize_answer(pred) == normalize_answer(q["answer"]),
                                    "answer_nll": loss})
    finally:
        tok.padding_side = old_side
    return summarize(predictions)


def _cap(config: EvalConfig, answer_tokens: int) -> int:
    """New tokens generated for a question whose reference answer (with its end-of-turn token) has
    ``answer_tokens`` tokens."""
    if config.answer_slack is None:
        return config.max_new_tokens
    return max(1, min(config.max_new_tokens, answer_tokens + config.answer_slack))


def _eos_ids(vlm: Any, tok: Any) -> set[int]:
    """The tokens that end generation (the generation config's, as ``generate`` uses; else the tokenizer's)."""
    eos = getattr(getattr(vlm, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    return {int(x) for x in (eos if isinstance(eos, (list, tuple)) else [eos]) if x is not None}


def _cache_arg(model: Any) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _evaluate_cached(vlm: Any, processor: Any, questions: list[dict[str, Any]], config: EvalConfig, feats: Any,
                     *, progress: bool) -> list[dict[str, Any]]:
    """Exact match and answer NLL of every question with cached image features.

    Each question is rendered once as (question, reference answer), as training and scoring render it; the
    prompt is that rendering before the answer's first token. Per batch (questions of similar length, prompts
    left-padded): one forward pass over the prompts with a KV cache gives the first generated token and the
    first answer token's NLL; the reference answer fed on a copy of that cache gives the rest of the NLL;
    greedy decoding continues from the cache, for at most the answer's length + ``answer_slack`` tokens."""
    import copy

    import torch
    import torch.nn.functional as F
    from PIL import Image

    from presel.records import Turn
    from presel.vlm.render import IGNORE, encode_conversation

    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = _eos_ids(vlm, tok)
    device = next(vlm.parameters()).device
    cache_arg = _cache_arg(vlm)
    keys = feats.ensure([q["image"] for q in questions])
    blank = Image.new("RGB", (16, 16))  # LLaVA's image token count is fixed; the pixels come from the cache
    rows = []
    for q in questions:
        enc = encode_conversation(processor, blank, (Turn("user", q["question"]), Turn("assistant", q["answer"])))
        at = (enc.labels != IGNORE).nonzero()[:, 0]
        first, last = int(at[0]), int(at[-1])
        rows.append((enc.input_ids[:first], enc.input_ids[first:last + 1], enc.labels[first:last + 1]))
    order = sorted(range(len(questions)), key=lambda i: (len(rows[i][0]) + len(rows[i][1]), i))
    results: list[dict[str, Any] | None] = [None] * len(questions)
    starts = range(0, len(order), config.batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="evaluate", unit="batch")
    for s0 in starts:
        idx = order[s0:s0 + config.batch_size]
        B = len(idx)
        P = max(len(rows[i][0]) for i in idx)
        A = max(len(rows[i][1]) for i in idx)
        ids = torch.full((B, P), int(pad), dtype=torch.long)
        mask = torch.zeros((B, P), dtype=torch.long)
        ans = torch.full((B, A), int(pad), dtype=torch.long)
        ans_mask = torch.zeros((B, A), dtype=torch.long)
        target = torch.full((B, A), IGNORE, dtype=torch.long)
        plen = torch.zeros(B, dtype=torch.long)
        for b, i in enumerate(idx):
            prompt, answer, labels = rows[i]
            ids[b, P - len(prompt):] = prompt
            mask[b, P - len(prompt):] = 1
            ans[b, :len(answer)] = answer
            ans_mask[b, :len(answer)] = 1
            target[b, :len(answer)] = labels
            plen[b] = len(prompt)
        caps = [_cap(config, int((target[b] != IGNORE).sum())) for b in range(B)]
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        image_feats = torch.stack([feats.feature(keys[i]) for i in idx])
        with torch.inference_mode():
            emb = feats.embed(vlm, ids.to(device), image_feats)
            out = vlm(inputs_embeds=emb, attention_mask=mask.to(device), position_ids=pos.to(device),
                      use_cache=True, logits_to_keep=1)
            cache = getattr(out, cache_arg)
            first_logits = out.logits[:, -1].float()
            logits = [first_logits.unsqueeze(1)]
            if A > 1 and config.answer_nll:  # teacher-forced continuation on a copy of the prompt cache
                full_mask = torch.cat([mask, ans_mask], dim=1).to(device)
                cpos = (plen.unsqueeze(1) + torch.arange(A - 1)).to(device)
                cont = vlm(inputs_embeds=vlm.get_input_embeddings()(ans[:, :A - 1].to(device)),
                           attention_mask=full_mask[:, :P + A - 1], position_ids=cpos, use_cache=True,
                           **{cache_arg: copy.deepcopy(cache)})
                logits.append(cont.logits.float())
            logits = torch.cat(logits, dim=1)
            nll = [None] * B
            if config.answer_nll:
                tgt = target[:, :logits.shape[1]].to(device)
                m = tgt != IGNORE
                per = F.cross_entropy(logits[m], tgt[m], reduction="none")
                sums = torch.zeros(B, dtype=torch.float64, device=device).index_add(0, m.nonzero()[:, 0], per.double())
                nll = (sums / m.sum(1)).tolist()
            gen = [first_logits.argmax(-1)]
            done = torch.tensor([int(t) in eos for t in gen[0].tolist()])
            cur_mask = mask.to(device)
            for t in range(1, max(caps)):
                if bool(done.all()):
                    break
                cur_mask = torch.cat([cur_mask, torch.ones((B, 1), dtype=cur_mask.dtype, device=device)], dim=1)
                step = vlm(inputs_embeds=vlm.get_input_embeddings()(gen[-1].unsqueeze(1)), attention_mask=cur_mask,
                           position_ids=(plen + t - 1).unsqueeze(1).to(device), use_cache=True,
                           logits_to_keep=1, **{cache_arg: cache})
                cache = getattr(step, cache_arg)
                nxt = step.logits[:, -1].argmax(-1)
                nxt = torch.where(done.to(device), torch.full_like(nxt, int(pad)), nxt)
                gen.append(nxt)
                done |= torch.tensor([int(x) in eos for x in nxt.tolist()])
        gen_t = torch.stack(gen, dim=1).cpu()
        for b, i in enumerate(idx):
            toks = []
            for x in gen_t[b, :caps[b]].tolist():
                if x in eos:
                    break
                toks.append(x)
            q = questions[i]
            pred = tok.decode(toks, skip_special_tokens=True).strip()
            results[i] = {"id": q["id"], "task": q["task"], "answer": q["answer"], "prediction": pred,
                          "correct": normalize_answer(pred) == normalize_answer(q["answer"]),
                          "answer_nll": nll[b]}
    return [r for r in results if r is not None]


def answer_nll(scorer: Any, images: list[Any], batch: list[dict[str, Any]]) -> list[float]:
    """Mean NLL of each reference answer given its image and question (teacher forcing, one forward pass)."""
    from presel.records import Turn
    from presel.vlm.render import encode_conversation

    enc = [encode_conversation(scorer.processor, im, (Turn("user", q["question"]), Turn("assistant", q["answer"])))
           for im, q in zip(images, batch)]
    losses, _ = scorer.losses(enc)
    return [float(x) for x in losses]


def summarize(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task and overall: exact-match accuracy and, where predictions carry it, mean answer NLL
    (the overall figures are means over tasks)."""
    tasks: dict[str, list[bool]] = defaultdict(list)
    nlls: dict[str, list[float]] = defaultdict(list)
    for p in predictions:
        tasks[p["task"]].append(bool(p["correct"]))
        if p.get("answer_nll") is not None:
            nlls[p["task"]].append(float(p["answer_nll"]))
    per_task: dict[str, dict[str, Any]] = {}
    for t, v in sorted(tasks.items()):
        per_task[t] = {"n": len(v), "accuracy": sum(v) / len(v)}
        if nlls.get(t):
            per_task[t]["answer_nll"] = sum(nlls[t]) / len(nlls[t])
    mean = sum(x["accuracy"] for x in per_task.values()) / len(per_task) if per_task else 0.0
    out = {"per_task": per_task, "mean_accuracy": mean, "n": len(predictions), "predictions": predictions}
    if per_task and all("answer_nll" in x for x in per_task.values()):
        out["mean_answer_nll"] = sum(x["answer_nll"] for x in per_task.values()) / len(per_task)
    return out


def relative_table(results: dict[str, dict[str, Any]], reference: str = "full") -> str:
    """Paper-style table: per-task accuracy of each model and its relative score vs ``reference`` (in %)."""
    names = list(results)
    tasks = sorted({t for r in results.values() for t in r["per_task"]})
    head = ["task"] + names
    rows = [head]
    for t in tasks:
        rows.append([t] + [f"{results[n]['per_task'].get(t, {}).get('accuracy', float('nan')) * 100:.1f}" for n in names])
    rows.append(["mean"] + [f"{results[n]['mean_accuracy'] * 100:.1f}" for n in names])
    if reference in results:
        ref = results[reference]["per_task"]

        def rel(n: str) -> str:
            vals = [results[n]["per_task"][t]["accuracy"] / ref[t]["accuracy"] for t in tasks
                    if t in results[n]["per_task"] and ref.get(t, {}).get("accuracy", 0) > 0]
            return f"{100 * sum(vals) / len(vals):.1f}%" if vals else "n/a"

        rows.append([f"relative to {reference}"] + [rel(n) for n in names])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
