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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise PreselError(f"batch_size={self.batch_size} must be >= 1")
        if self.max_new_tokens < 1:
            raise PreselError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.limit_per_task is not None and self.limit_per_task < 1:
            raise PreselError(f"limit_per_task={self.limit_per_task} must be >= 1 (or unset)")


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
                   *, progress: bool = True) -> dict[str, Any]:
    """Answer every held-out question; return per-task and overall exact-match accuracy."""
    import torch
    from PIL import Image

    from presel.vlm.load import load_vlm

    config = config or EvalConfig()
    questions, _ = load_questions(data, config.limit_per_task)
    vlm, processor = load_vlm(model, dtype=config.dtype, device=config.device)
    vlm.eval()
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
            with torch.inference_mode():
                out = vlm.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
            answers = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for q, pred, loss in zip(batch, answers, nll):
                pred = pred.strip()
                predictions.append({"id": q["id"], "task": q["task"], "answer": q["answer"], "prediction": pred,
                                    "correct": normalize_answer(pred) == normalize_answer(q["answer"]),
                                    "answer_nll": loss})
    finally:
        tok.padding_side = old_side
    return summarize(predictions)


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
