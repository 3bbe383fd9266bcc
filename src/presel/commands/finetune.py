"""``presel finetune``: LoRA (or full) fine-tuning of a VLM on LLaVA-format conversations."""

from __future__ import annotations

import argparse

HELP = "fine-tune a VLM (LoRA + projector, or --full) on LLaVA JSON/JSONL conversations; writes a merged model dir"
DESCRIPTION = HELP + """.

Used for the reference model (base VLM on D_ref, one epoch) and for the final model (on D_ref + selection).
Defaults follow the LLaVA-1.5 LoRA recipe: r=128, alpha=256, lr 2e-4, projector lr 2e-5, cosine schedule
with 3%% warm-up, vision tower frozen. The output is a standalone model directory (merged weights, processor,
adapter/, train_log.jsonl, skipped.jsonl, summary.json, presel_config.json) that `presel score --model OUT`
and plain transformers load. Rerun the same command after a crash or kill: training resumes from the last
checkpoint (kept in .<OUT>.finetune-work/ next to OUT until the run finishes).

Multi-GPU (DDP): torchrun --nproc_per_node 8 -m presel.cli finetune ...  (or accelerate launch
--num_processes 8 -m presel.cli finetune ...); --batch-size is per GPU, the global batch is
batch-size x grad-accum x GPUs."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from presel.commands._common import add_out_arguments

    g = p.add_argument_group("data and model")
    g.add_argument("--data", required=True, help="training conversations: LLaVA JSON/JSONL (or ShareGPT/messages JSONL)")
    g.add_argument("--image-root", default=None, help="folder image paths are relative to (default: the data file's folder)")
    g.add_argument("--id-field", default="id", help="record id field; '@index' keys records by position")
    g.add_argument("--model", required=True,
                   help="base VLM: local directory, hub id (e.g. llava-hf/llava-1.5-7b-hf), tiny-llava or llava-small")
    add_out_arguments(p)
    t = p.add_argument_group("training")
    t.add_argument("--full", action="store_true", help="full fine-tuning of language model + projector instead of LoRA")
    t.add_argument("--lora-r", type=int, default=128)
    t.add_argument("--lora-alpha", type=float, default=256.0)
    t.add_argument("--lora-dropout", type=float, default=0.05)
    t.add_argument("--target-modules", default=None,
                   help="comma-separated linear layer names to put LoRA on (default: all linear layers of the language model)")
    t.add_argument("--lr", type=float, default=2e-4, help="learning rate of LoRA / the language model")
    t.add_argument("--projector-lr", type=float, default=2e-5, help="learning rate of the multimodal projector (0 freezes it)")
    t.add_argument("--train-vision", action="store_true", help="train the vision tower too (frozen by default)")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (overrides --epochs)")
    t.add_argument("--batch-size", type=int, default=16, help="micro-batch per device")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--warmup-ratio", type=float, default=0.03)
    t.add_argument("--scheduler", choices=["cosine", "linear", "constant"], default="cosine")
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    t.add_argument("--max-length", type=int, default=2048, help="token limit per sample (0: none)")
    t.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("runtime")
    r.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    gc = r.add_mutually_exclusive_group()
    gc.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None,
                    help="force gradient checkpointing on (default: on for CUDA, off on CPU)")
    gc.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    r.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps for resume (0: never)")
    r.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    r.add_argument("--log-every", type=int, default=10, help="progress line every N steps (0: quiet)")
    t.add_argument("--chat-format", default=None, choices=["llava-v1"],
                   help="llava-v1: LLaVA-1.5's conversation format, as the PreSel authors train (default: the model's "
                        "own chat template; llava-v1 under --protocol official)")
    from presel.protocol import add_protocol_argument

    add_protocol_argument(t)


def run(args: argparse.Namespace) -> int:
    import json

    from presel.finetune.train import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        full=args.full, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.target_modules, lr=args.lr, projector_lr=args.projector_lr,
        freeze_vision=not args.train_vision, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, scheduler=args.scheduler,
        max_grad_norm=args.max_grad_norm or None, dtype=args.dtype, device=args.device,
        gradient_checkpointing=args.gradient_checkpointing, max_length=args.max_length or None, seed=args.seed,
        save_every_steps=args.save_every, num_workers=args.num_workers, log_every=args.log_every,
        chat_format=args.chat_format, protocol=args.protocol,
    )
    out = finetune(args.data, args.model, args.out, cfg, image_root=args.image_root, id_field=args.id_field,
                   overwrite=args.overwrite)
    import os

    if int(os.environ.get("RANK", "0") or 0) == 0:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        print(f"{out}  ({summary['mode']}, {summary['steps']} steps, {summary['samples']} samples, "
              f"{summary['skipped']} skipped, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f})")
    return 0
