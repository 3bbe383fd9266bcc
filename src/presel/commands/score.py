"""presel score: instruction relevance scores of the annotated reference set (PreSel step 1.3-1.4)."""

from __future__ import annotations

import argparse

HELP = "score IRS = L(R|Q,I) / L(R|I) of annotated reference samples with any Hugging Face VLM"
DESCRIPTION = (HELP + ". Writes irs.parquet (id, task, loss_q, loss_noq, irs, n_response_tokens), rejected.jsonl, "
               "summary.json and config.json to --out. Resumable: rerun the same command after an interruption.")


# help of each ScoreConfig field; the flag is the YAML key of a run's score section
HELPS = {
    "image_root": "folder the image paths are relative to (none: the data file's folder)",
    "default_task": "task for records without a 'task' field",
    "task_field": "record field holding the task (none: task, then task_name)",
    "id_field": "record id field; '@index' keys records by position",
    "batch_size": "samples per forward pass",
    "dtype": "auto: bf16 on CUDA, fp32 on CPU",
    "device": "auto, cpu, cuda or cuda:N",
    "max_length": "truncate rendered samples to this many tokens (none: no limit)",
    "seed": "torch seed (scoring itself is deterministic)",
    "executor": "ray: one model per Ray actor / GPU",
    "ray_actors": "Ray actors of --executor ray, one model each (none: one per GPU, else 1)",
    "ray_address": "address of an existing Ray cluster",
    "ray_progress_timeout": "stop with an error when no batch finished for this many seconds on Ray",
    "num_workers": "processes decoding and rendering batches ahead of the model (none: 0 on CPU, up to 4 with a GPU)",
    "prefetch": "render the next batch while the model runs (with --num-workers 0)",
    "chat_format": "llava-v1: LLaVA-1.5's conversation format, as the PreSel authors score (none: the model's own chat "
                   "template; llava-v1 under --protocol official)",
    "protocol": "paper: the paper's text, counted in distinct images (default); official: the authors' code, counted in "
                "records (docs/reproduce.md lists the differences)",
}
INPUTS = ("image_root", "default_task", "task_field", "id_field")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.config import add_config_arguments, add_deprecated_alias
    from presel.devices import dtype_choices
    from presel.importance.scoring import EXECUTORS, ScoreConfig
    from presel.protocol import PROTOCOLS

    choices = {"dtype": dtype_choices(), "executor": EXECUTORS, "chat_format": ("llava-v1",),
               "protocol": tuple(PROTOCOLS)}
    g = p.add_argument_group("inputs")
    g.add_argument("--data", required=True, help="annotated reference samples: LLaVA JSON/JSONL with id, image, task, conversations")
    g.add_argument("--model", required=True,
                   help="reference model: a directory, a hub id (from the local cache) or an offline name (llava-small, tiny-llava)")
    add_config_arguments(g, ScoreConfig, only=INPUTS, helps=HELPS)
    g = p.add_argument_group("scoring (flags are the keys of a run's score section)")
    add_config_arguments(g, ScoreConfig, helps=HELPS, choices=choices, skip=("model", *INPUTS))
    # old names, kept working
    add_deprecated_alias(g, "--workers", "ray_actors", type=int)
    add_deprecated_alias(g, "--render-workers", "num_workers", type=int)
    p.add_argument("--out", required=True, help="output directory (resumable: rerun to continue)")
    p.add_argument("--overwrite", action="store_true", help="discard results of other settings in --out and start over")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress line")
    add_deprecated_alias(p, "--quiet", "progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from presel.config import config_from_args
    from presel.importance.scoring import ScoreConfig, score_to_dir

    cfg = config_from_args(ScoreConfig, args)
    s = score_to_dir(args.data, args.out, cfg, overwrite=args.overwrite, progress=args.progress)
    width = max([4] + [len(t) for t in s["tasks"]])
    print(f"{'task':<{width}}  scored  rejected  mean IRS")
    for t, v in s["tasks"].items():
        m = f"{v['mean_irs']:.4f}" if v["mean_irs"] is not None else "-"
        print(f"{t:<{width}}  {v['scored']:>6}  {v['rejected']:>8}  {m:>8}")
    print(f"scored {s['scored']} of {s['samples']} samples ({s['rejected']} rejected, see rejected.jsonl); wrote {args.out}")
    return 0
