"""Where one arm of ``presel compare`` spends its time: fine-tuning steps and held-out evaluation.

    python benchmarks/compare_profile.py --run runs/demo --data runs/demo/compare/selections/presel-s0/generate/train.json \
        --out /tmp/profile [--plain] [--steps 8] [--per-task 20] [--dtype fp32]

Prints CPU seconds (what the process used: comparable on a busy machine) and wall seconds of a few
fine-tuning steps and of the evaluation of ``--per-task`` held-out questions per task, with the wall time
spent in the vision tower, in rendering, and (``--plain``: no image feature cache, the generic evaluation
path) in the answer-NLL pass and ``generate()``. Run it once with ``--plain`` and once without to compare;
run it with the main checkout's ``PYTHONPATH`` for the code before a change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def _timed(owner, name: str, key: str, acc: dict[str, float]) -> None:
    f = getattr(owner, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a demo run folder (pool/heldout.json, pool/ images)")
    ap.add_argument("--data", required=True, help="the arm's training data (LLaVA JSON)")
    ap.add_argument("--out", required=True, help="scratch folder (replaced)")
    ap.add_argument("--plain", action="store_true", help="no image feature cache (the generic paths)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--per-task", type=int, default=20)
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()

    import transformers

    import presel.evaluate as ev
    import presel.vlm.render as render
    from presel.finetune.train import FinetuneConfig, finetune
    from presel.importance.scoring import Scorer

    run, out = Path(args.run), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    acc: dict[str, float] = {}
    _timed(transformers.Dinov2Model, "forward", "vision_tower", acc)
    _timed(render, "encode_conversation", "rendering", acc)
    feats = None if args.plain else {"image_features": out / "features"}
    cfg = FinetuneConfig(lora_r=16, lora_alpha=32, lr=1e-3, projector_lr=1e-3, batch_size=8, max_length=160, seed=0,
                         save_every_steps=0, log_every=0, max_steps=args.steps, dtype=args.dtype)
    w0, c0 = time.perf_counter(), time.process_time()
    finetune(args.data, "llava-small", out / "model", cfg, image_root=run / "pool", **(feats or {}))
    tune = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0, **acc}
    acc.clear()
    if args.plain:
        _timed(Scorer, "losses", "answer_nll_pass", acc)
        from transformers.generation.utils import GenerationMixin

        _timed(GenerationMixin, "generate", "generate", acc)
    w0, c0 = time.perf_counter(), time.process_time()
    res = ev.evaluate_model(out / "model", run / "pool" / "heldout.json",
                            ev.EvalConfig(batch_size=16 if args.plain else 32, limit_per_task=args.per_task,
                                          dtype=args.dtype), progress=False, **(feats or {}))
    evaluation = {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0, "questions": res["n"], **acc}
    print(json.dumps({"plain": args.plain, "finetune_steps": args.steps, "finetune": tune, "evaluate": evaluation,
                      "mean_answer_nll": res.get("mean_answer_nll"), "mean_accuracy": res["mean_accuracy"],
                      "load_average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
