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


# help of each FinetuneConfig field; the flag is the YAML key of a run's ref_model / final_model section
HELPS = {
    "full": "full fine-tuning of language model + projector instead of LoRA",
    "lora_r": "LoRA rank", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
    "target_modules": "comma-separated linear layer names to put LoRA on (none: all linear layers of the language model)",
    "lr": "learning rate of LoRA / the language model",
    "projector_lr": "learning rate of the multimodal projector (0 freezes it)",
    "freeze_vision": "keep the vision tower frozen (--no-freeze-vision trains it too)",
    "epochs": "passes over the data", "max_steps": "stop after this many optimizer steps (overrides --epochs; none: off)",
    "batch_size": "micro-batch per device", "grad_accum": "gradient accumulation steps",
    "weight_decay": "weight decay", "warmup_ratio": "share of the steps spent warming up the learning rate",
    "scheduler": "learning-rate schedule", "max_grad_norm": "gradient clipping (none: off)",
    "dtype": "auto: bf16 on CUDA, fp32 on CPU", "device": "auto, cpu, cuda, cuda:N",
    "gradient_checkpointing": "gradient checkpointing (default: on for CUDA, off on CPU)",
    "max_length": "token limit per sample (none: no limit)", "seed": "seed of shuffling, dropout and init",
    "save_every_steps": "checkpoint every N steps for resume (0: never)",
    "keep_checkpoints": "checkpoints kept for resume", "num_workers": "DataLoader worker processes",
    "log_every": "progress line every N steps (0: quiet)",
    "chat_format": "llava-v1: LLaVA-1.5's conversation format, as the PreSel authors train (none: the model's own "
                   "chat template; llava-v1 under --protocol official)",
    "protocol": "paper: the paper's text, counted in distinct images; official: the authors' code, counted in records "
                "(docs/reproduce.md lists the differences)",
}
RUNTIME = ("dtype", "device", "gradient_checkpointing", "save_every_steps", "keep_checkpoints", "num_workers", "log_every")


def add_arguments(p: argparse.ArgumentParser) -> None:
    import dataclasses

    from presel.commands._common import add_out_arguments
    from presel.config import add_config_arguments, add_deprecated_alias
    from presel.finetune.train import DTYPES, SCHEDULERS, FinetuneConfig

    g = p.add_argument_group("data and model")
    g.add_argument("--data", required=True, help="training conversations: LLaVA JSON/JSONL (or ShareGPT/messages JSONL)")
    g.add_argument("--image-root", default=None, help="folder image paths are relative to (default: the data file's folder)")
    g.add_argument("--id-field", default="id", help="record id field; '@index' keys records by position")
    g.add_argument("--model", required=True,
                   help="base VLM: local directory, hub id (e.g. llava-hf/llava-1.5-7b-hf), tiny-llava or llava-small")
    add_out_arguments(p)
    from presel.protocol import PROTOCOLS

    choices = {"scheduler": SCHEDULERS, "dtype": DTYPES, "protocol": PROTOCOLS}
    t = p.add_argument_group("training (flags are the keys of a run's ref_model / final_model section)")
    add_config_arguments(t, FinetuneConfig, skip=RUNTIME, helps=HELPS, choices=choices,
                         zero_is_none=("max_length", "max_grad_norm"))
    r = p.add_argument_group("runtime (changing these never invalidates a finished or resumable run)")
    add_config_arguments(r, FinetuneConfig, skip=tuple(f.name for f in dataclasses.fields(FinetuneConfig)
                                                        if f.name not in RUNTIME), helps=HELPS, choices=choices)
    # old names, kept working
    add_deprecated_alias(r, "--save-every", "save_every_steps", type=int)
    add_deprecated_alias(t, "--train-vision", "freeze_vision", action="store_false")


def run(args: argparse.Namespace) -> int:
    import json

    from presel.config import config_from_args
    from presel.finetune.train import FinetuneConfig, finetune

    cfg = config_from_args(FinetuneConfig, args)
    out = finetune(args.data, args.model, args.out, cfg, image_root=args.image_root, id_field=args.id_field,
                   overwrite=args.overwrite)
    import os

    if int(os.environ.get("RANK", "0") or 0) == 0:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        print(f"{out}  ({summary['mode']}, {summary['steps']} steps, {summary['samples']} samples, "
              f"{summary['skipped']} skipped, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f})")
    return 0
