"""``presel evaluate``: per-task exact-match accuracy of a model on held-out questions."""

from __future__ import annotations

import argparse

HELP = "per-task exact-match accuracy of a (fine-tuned) VLM on held-out questions"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory or hub id (or an offline name: llava-small, tiny-llava)")
    p.add_argument("--data", required=True, help="held-out LLaVA JSON/JSONL with a 'task' field; first answer is the exact reference")
    from presel.config import add_config_arguments
    from presel.evaluate import EvalConfig

    add_config_arguments(p.add_argument_group("evaluation"), EvalConfig, helps={
        "batch_size": "questions per generate call", "max_new_tokens": "answer length limit in tokens",
        "limit_per_task": "evaluate at most this many questions per task",
        "dtype": "auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16", "device": "auto, cpu, cuda or cuda:N",
        "answer_nll": "also the negative log-likelihood of the reference answer"})
    p.add_argument("--out", default=None, help="write the results (per task + predictions) to this JSON file")


def run(args: argparse.Namespace) -> int:
    from presel.cache import resolve_model
    from presel.config import config_from_args
    from presel.evaluate import EvalConfig, evaluate_model
    from presel.io.atomic import write_json

    cfg = config_from_args(EvalConfig, args)
    res = evaluate_model(resolve_model(args.model), args.data, cfg)
    for task, r in res["per_task"].items():
        print(f"{task:24s} {r['accuracy'] * 100:6.1f}%  (n={r['n']})")
    print(f"{'mean':24s} {res['mean_accuracy'] * 100:6.1f}%  (n={res['n']})")
    if args.out:
        write_json(args.out, res)
    return 0
