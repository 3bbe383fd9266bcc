"""presel score: instruction relevance scores of the annotated reference set (PreSel step 1.3-1.4)."""

from __future__ import annotations

import argparse

HELP = "score IRS = L(R|Q,I) / L(R|I) of annotated reference samples with any Hugging Face VLM"
DESCRIPTION = (HELP + ". Writes irs.parquet (id, task, loss_q, loss_noq, irs, n_response_tokens), rejected.jsonl, "
               "summary.json and config.json to --out. Resumable: rerun the same command after an interruption.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--data", required=True, help="annotated reference samples: LLaVA JSON/JSONL with id, image, task, conversations")
    g.add_argument("--model", required=True,
                   help="reference model: a directory, a hub id (from the local cache) or an offline name (llava-small, tiny-llava)")
    g.add_argument("--image-root", default=None, help="folder the image paths are relative to (default: the data file's folder)")
    g.add_argument("--default-task", default=None, help="task for records without a 'task' field")
    g.add_argument("--task-field", default=None, help="record field holding the task (default: task, then task_name)")
    g.add_argument("--id-field", default="id", help="record id field; '@index' keys records by position")
    g = p.add_argument_group("scoring")
    g.add_argument("--batch-size", type=int, default=8, help="samples per forward pass")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="auto: bf16 on CUDA, fp32 on CPU")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--max-length", type=int, default=None, help="truncate rendered samples to this many tokens")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--executor", default="local", choices=["local", "ray"], help="ray: one model per Ray actor / GPU")
    g.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else 1)")
    g.add_argument("--ray-address", default=None, help="address of an existing Ray cluster")
    g.add_argument("--ray-progress-timeout", type=float, default=600.0,
                   help="stop with an error when no batch finished for this many seconds on Ray")
    g.add_argument("--render-workers", type=int, default=None,
                   help="processes decoding and rendering batches ahead of the model (default: 0 on CPU, up to 4 with a GPU)")
    g.add_argument("--no-prefetch", action="store_true", help="do not render the next batch while the model runs")
    g.add_argument("--chat-format", default=None, choices=["llava-v1"],
                   help="llava-v1: LLaVA-1.5's conversation format, as the PreSel authors score (default: the model's "
                        "own chat template; llava-v1 under --protocol official)")
    from presel.protocol import add_protocol_argument

    add_protocol_argument(g)
    p.add_argument("--out", required=True, help="output directory (resumable: rerun to continue)")
    p.add_argument("--overwrite", action="store_true", help="discard results of other settings in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    from presel.importance.scoring import ScoreConfig, score_to_dir

    cfg = ScoreConfig(model=args.model, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                      max_length=args.max_length, seed=args.seed, image_root=args.image_root,
                      default_task=args.default_task, id_field=args.id_field, task_field=args.task_field,
                      executor=args.executor, workers=args.workers, ray_address=args.ray_address,
                      ray_progress_timeout=args.ray_progress_timeout,
                      render_workers=args.render_workers, prefetch=not args.no_prefetch,
                      chat_format=args.chat_format, protocol=args.protocol)
    s = score_to_dir(args.data, args.out, cfg, overwrite=args.overwrite, progress=not args.quiet)
    width = max([4] + [len(t) for t in s["tasks"]])
    print(f"{'task':<{width}}  scored  rejected  mean IRS")
    for t, v in s["tasks"].items():
        m = f"{v['mean_irs']:.4f}" if v["mean_irs"] is not None else "-"
        print(f"{t:<{width}}  {v['scored']:>6}  {v['rejected']:>8}  {m:>8}")
    print(f"scored {s['scored']} of {s['samples']} samples ({s['rejected']} rejected, see rejected.jsonl); wrote {args.out}")
    return 0
