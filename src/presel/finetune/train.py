"""Fine-tune a Hugging Face VLM on LLaVA-format conversations (PreSel steps 1.2 and 3).

One function, :func:`finetune`, serves both the reference model (base VLM on ``D_ref``, one epoch) and the
final model (on ``D_ref`` + the selection). Recipe (LLaVA-1.5 LoRA): LoRA on every linear layer of the
language model (r=128, alpha=256, dropout 0.05, lr 2e-4), the multimodal projector trained in full with
its own learning rate (2e-5), the vision tower frozen; AdamW, linear warm-up (3%) then cosine decay, no
weight decay, gradient clipping at 1.0. ``full=True`` trains the whole language model and the projector
instead of LoRA. Loss: token-mean cross-entropy over the assistant tokens of the whole global batch
(labels from :func:`presel.vlm.render.encode_conversation`, the same rendering as scoring).

Precision: fp32 on CPU; on CUDA the frozen weights are bf16, the trained ones fp32 (master weights) and
the forward pass runs under bf16 autocast with gradient checkpointing.

Output (``out``): a merged, standalone model directory with the processor (loads with
:func:`presel.vlm.load.load_vlm`, plain ``AutoModelForImageTextToText.from_pretrained`` and
``presel score --model out``), ``adapter/`` (the PEFT adapter, LoRA only), ``train_log.jsonl`` (one row
per optimizer step: step, epoch, loss, lr, tokens, response_tokens, grad_norm, elapsed), ``skipped.jsonl``
(records left out, with the reason), ``summary.json`` and ``config.json``.

Resume: while training, checkpoints (trained weights, optimizer, scheduler, RNG, step) are written
atomically every ``save_every_steps`` steps to ``<out parent>/.<out name>.finetune-work/``. Rerunning the
same command after a crash or kill continues from the last checkpoint and ends with the same weights as
an uninterrupted run (batches come from a seeded per-epoch permutation, dropout is reseeded per step).

Multi-GPU (DDP): launch the same command with ``torchrun --nproc_per_node N -m presel.cli finetune ...``
or ``accelerate launch --num_processes N -m presel.cli finetune ...``. Each process reads ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` from the launcher, uses ``cuda:LOCAL_RANK`` and takes every N-th
micro-batch; ``batch_size`` is per device, so the global batch is ``batch_size * grad_accum * N``
(LLaVA-1.5: 16 x 1 x 8 = 128). Rank 0 writes the checkpoints and the output. DeepSpeed/FSDP sharding is
not built in: full fine-tuning of a 7B model needs about 16 bytes per parameter per GPU under DDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.config import identity, neutral
from presel.devices import dtype_choices
from presel.errors import PreselError
from presel.vlm.parts import ModelParts, find_parts

DTYPES = dtype_choices(exclude=("fp16",))  # fp16 training would need loss scaling
# the model's own config.json (transformers) owns that name in a model directory; presel's resolved config goes here
PRESEL_CONFIG = "presel_config.json"
SCHEDULERS = ("cosine", "linear", "constant")


def resume_identity(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings an unfinished run resumes under: every result setting (:func:`presel.config.identity`)."""
    return identity(cfg)


@dataclass
class FinetuneConfig:
    """Settings of :func:`finetune` (defaults: the LLaVA-1.5 LoRA recipe the paper uses)."""

    full: bool = False  # full fine-tuning of language model + projector instead of LoRA
    lora_r: int = 128
    lora_alpha: float = 256.0
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # names of linear layers (e.g. q_proj v_proj); None: all of the LM
    lr: float = 2e-4  # LoRA / language model learning rate
    projector_lr: float = 2e-5  # multimodal projector learning rate; 0 freezes the projector
    freeze_vision: bool = True  # False: vision tower trained too (LoRA on its linear layers, or in full)
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 16  # per device micro-batch
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float | None = 1.0
    dtype: str = "auto"  # auto: bf16 on CUDA (when supported), fp32 on CPU
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU
    max_length: int | None = 2048  # token limit per sample (None: no limit)
    seed: int = 0
    save_every_steps: int = neutral(50)  # checkpoint period for resume; 0: no checkpoints
    keep_checkpoints: int = neutral(1)
    num_workers: int = neutral(0)  # DataLoader worker processes (image decoding + rendering)
    log_every: int = neutral(10)  # progress line to stderr every N steps (0: quiet); train_log.jsonl gets every step
    chat_format: str | None = None  # llava-v1 (LLaVA-1.5's conversation format) or None: the model's own template
    protocol: str = "paper"  # official: chat_format defaults to llava-v1, as the authors train

    @property
    def effective_chat_format(self) -> str | None:
        from presel.protocol import default_chat_format

        return default_chat_format(self.protocol, self.chat_format)

    def __post_init__(self) -> None:
        from presel.protocol import check_protocol
        from presel.vlm.render import check_chat_format

        check_protocol(self.protocol)
        check_chat_format(self.chat_format)

        def bad(name: str, why: str) -> PreselError:
            return PreselError(f"{name}={getattr(self, name)!r} {why}")

        for name in ("lora_r", "epochs", "batch_size", "grad_accum", "keep_checkpoints"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("save_every_steps", "num_workers", "log_every", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(name, "must be an integer >= 0")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise bad("max_steps", "must be an integer >= 1 (or None to train for `epochs`)")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 8):
            raise bad("max_length", "must be an integer >= 8 (or None for no limit)")
        if not self.lora_alpha > 0:
            raise bad("lora_alpha", "must be > 0")
        if not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "must be in [0, 1)")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if not self.projector_lr >= 0:
            raise bad("projector_lr", "must be >= 0 (0 freezes the projector)")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", "must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "must be in [0, 1)")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise bad("max_grad_norm", "must be > 0 (or None for no clipping)")
        if self.scheduler not in SCHEDULERS:
            raise bad("scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        if self.dtype not in DTYPES:
            hint = "; fp16 training needs loss scaling and is not supported, use bf16" if self.dtype == "fp16" else ""
            raise bad("dtype", f"must be one of {', '.join(DTYPES)}{hint}")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise bad("device", "must be auto, cpu, cuda, cuda:N or mps")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = tuple(s for s in re.split(r"[,\s]+", self.target_modules) if s)
            self.target_modules = tuple(self.target_modules)
            if not self.target_modules or not all(isinstance(s, str) and s for s in self.target_modules):
                raise bad("target_modules", "must be a non-empty list of linear layer names, e.g. q_proj v_proj "
                          "(or None for all linear layers of the language model)")


# --------------------------------------------------------------------------------------------- helpers


@dataclass
class _Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_env() -> _Dist:
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return _Dist(ws, int(os.environ.get("RANK", "0") or 0), int(os.environ.get("LOCAL_RANK", "0") or 0))


def _resolve_device(cfg: FinetuneConfig, dist: _Dist) -> str:
    from presel.devices import resolve_device

    return resolve_device(cfg.device, rank=dist.local_rank)


def _resolve_dtype(cfg: FinetuneConfig, device: str) -> str:
    from presel.devices import resolve_dtype_name

    return resolve_dtype_name(cfg.dtype, device)


def _torch_dtype(name: str) -> Any:
    from presel.devices import torch_dtype

    return torch_dtype(name)


def _under(name: str, prefix: str | None) -> bool:
    return bool(prefix) and (name == prefix or name.startswith(prefix + "."))


def _linear_names(model: Any, prefix: str, exclude: tuple[str | None, ...] = ()) -> list[str]:
    import torch

    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and _under(n, prefix) and not any(_under(n, e) for e in exclude)]


def lora_target_regex(model: Any, parts: ModelParts, cfg: FinetuneConfig) -> str:
    """A PEFT ``target_modules`` regex: linear layers of the language model (and of the vision tower when
    ``freeze_vision`` is off), restricted to ``cfg.target_modules`` names when given."""
    groups = [(parts.language, (parts.projector, parts.vision))]
    if not cfg.freeze_vision and parts.vision:
        groups.append((parts.vision, (parts.projector, parts.language)))
    alternatives = []
    available: set[str] = set()
    for prefix, exclude in groups:
        leaves = {n.rsplit(".", 1)[-1] for n in _linear_names(model, prefix, exclude)}
        available |= leaves
        if cfg.target_modules is not None:
            leaves &= set(cfg.target_modules)
        if leaves:
            alternatives.append(rf"{re.escape(prefix)}\..*\.({'|'.join(re.escape(s) for s in sorted(leaves))})")
    if cfg.target_modules is not None:
        missing = sorted(set(cfg.target_modules) - available)
        if missing:
            raise PreselError(f"target_modules: {', '.join(missing)} not found among the linear layers of the "
                              f"language model; available: {', '.join(sorted(available))}")
    if not alternatives:
        raise PreselError(f"{type(model).__name__}: no linear layer to put LoRA on under {parts.language}")
    return "|".join(f"(?:{a})" for a in alternatives)


def _reseed(seed: int, step: int, rank: int) -> None:
    import torch

    torch.manual_seed((seed * 1_000_003 + step * 9_973 + rank * 101) % (2**63))


def _lr_lambda(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _peak_memory(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------ checkpoints


CKPT_RE = re.compile(r"^step-(\d{8})$")


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The most advanced complete checkpoint (directories appear by atomic rename only)."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir())
    return found[-1][1] if found else None


def save_checkpoint(ckpt_dir: Path, step: int, trainable: dict[str, Any], optimizer: Any, scheduler: Any,
                    state: dict[str, Any], keep: int = 1) -> Path:
    """Write ``step-NNNNNNNN/`` atomically (temporary folder, fsync, rename), then drop older checkpoints."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.tmp-", dir=ckpt_dir))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir())
    for _, p in done[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.glob(".step-*.tmp-*"):  # leftovers of a killed save
        if p != tmp:
            shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(path: Path, params: dict[str, Any], optimizer: Any, scheduler: Any, device: str) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    if set(weights) != set(params):
        missing = sorted(set(params) - set(weights))[:3]
        raise PreselError(f"checkpoint {path} does not match this model (missing e.g. {missing}); "
                          f"remove {path.parent.parent} to start over")
    with torch.no_grad():
        for k, p in params.items():
            p.data.copy_(weights[k].to(p.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def _trim_log(log: Path, step: int) -> None:
    """Keep the log rows of steps <= ``step`` (rows written after the last checkpoint are redone)."""
    from presel.io.atomic import atomic_file

    if not log.exists():
        return
    keep = []
    for line in log.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if row.get("step", 0) <= step:
                keep.append(line)
    with atomic_file(log) as f:
        f.write("".join(k + "\n" for k in keep))


# --------------------------------------------------------------------------------------------- model


def prepare_model(model: Any, cfg: FinetuneConfig, *, gradient_checkpointing: bool = False) -> tuple[Any, dict]:
    """Freeze / wrap ``model`` for training. Returns ``(model, info)``; ``model`` is a ``PeftModel`` for LoRA.

    ``info``: ``parts`` (ModelParts), ``groups`` (name -> list of trainable parameter names), counts.
    """
    import torch

    parts = find_parts(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        try:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except ValueError as e:
            raise PreselError(f"{type(model).__name__} does not support gradient checkpointing ({e}); "
                              "pass --no-gradient-checkpointing") from None
    train_projector = parts.projector is not None and cfg.projector_lr > 0
    if cfg.full:
        for n, p in model.named_parameters():
            if (_under(n, parts.language) or n.startswith("lm_head")
                    or (train_projector and _under(n, parts.projector))
                    or (not cfg.freeze_vision and _under(n, parts.vision) and not _under(n, parts.projector))):
                p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
            target_modules=lora_target_regex(model, parts, cfg),
            modules_to_save=[parts.projector] if train_projector else None,
        )
        with warnings.catch_warnings():  # peft probes the deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lcfg)
    # master weights in fp32 (the frozen ones stay in the load dtype; autocast does the bf16 compute)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    groups: dict[str, list[str]] = {"language": [], "projector": [], "vision": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = n.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        if _under(plain, parts.projector):
            groups["projector"].append(n)
        elif _under(plain, parts.vision):
            groups["vision"].append(n)
        else:
            groups["language"].append(n)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    if n_train == 0:
        raise PreselError("no trainable parameter (check target_modules / projector_lr)")
    return model, {"parts": parts, "groups": groups, "trainable_params": n_train, "total_params": n_all}


# --------------------------------------------------------------------------------------------- main


def finetune(
    data: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    default_task: str | None = "finetune",
    id_field: str = "id",
    overwrite: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    image_features: str | os.PathLike | None = None,
) -> Path:
    """Fine-tune ``model`` (local dir, hub id, or ``tiny-llava`` / ``llava-small``) on ``data`` (LLaVA JSON/JSONL
    or any manifest :func:`presel.io.manifest.read_pool` reads); write the merged model to ``out``.

    Reruns resume from the last checkpoint. ``on_step(row)`` is called after each optimizer step with the
    log row (e.g. for progress bars; an exception raised there stops training like a crash would).
    ``image_features``: a folder for the frozen vision tower's outputs (:mod:`presel.vlm.image_features`): with a
    frozen tower, one process and a LLaVA-style model, each image goes through the tower once and is reused
    from there by later fine-tunes and evaluations (same losses to float tolerance). Returns ``out``.
    """
    import torch

    from presel.cache import resolve_model
    from presel.config import resolved_config
    from presel.finetune.data import ConversationDataset, MicroBatchSampler, StepPlan, load_train_data
    from presel.io.atomic import atomic_dir, write_json, write_jsonl

    cfg = config or FinetuneConfig()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PreselError(f"--out {out} already exists and is not empty; remove it, choose another path or pass --overwrite")
    if overwrite and out.is_dir():
        from presel.io.owned import check_deletable

        check_deletable(out)  # refuse now, not after training, to replace a folder presel did not write
    dist = _dist_env()
    device = _resolve_device(cfg, dist)
    train_dtype = _resolve_dtype(cfg, device)
    on_cuda = device.startswith("cuda")
    gc_on = on_cuda if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    if on_cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)  # the summary's peak is this run's, not an earlier stage's
    if dist.world_size > 1:
        import torch.distributed as tdist

        if not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if on_cuda else "gloo")

    data = Path(data)
    # rank 0 decodes every image once; the other ranks take its verdicts
    tdata = load_train_data(data, image_root=image_root, default_task=default_task, id_field=id_field,
                            threads=max(1, min(8, os.cpu_count() or 1)), check_images=dist.main)
    if dist.world_size > 1:
        shared = [tdata.skipped if dist.main else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        if not dist.main:
            gone = {r["id"] for r in shared[0]}
            tdata.samples = [r for r in tdata.samples if r.id not in gone]
            tdata.skipped = shared[0]
    model_name = str(model)
    model_path = resolve_model(model_name)

    work = out.parent / f".{out.name}.finetune-work"
    ckpt_dir = work / "checkpoints"
    log_path = work / "train_log.jsonl"
    fingerprint = {
        "data": str(data.resolve()), "data_digest": _file_digest(data), "model": model_name,
        "image_root": str(image_root) if image_root is not None else None, "world_size": dist.world_size,
        "config": resume_identity(cfg),
        "samples": len(tdata.samples),
    }
    if dist.main:
        work.mkdir(parents=True, exist_ok=True)
        fp_path = work / "fingerprint.json"
        if not fp_path.exists():
            from presel.io.owned import check_deletable

            check_deletable(work, only=("fingerprint.json",), what="work folder",
                            fix="move it away or choose another --out")  # it is deleted when training ends
        if fp_path.exists():
            old = json.loads(fp_path.read_text(encoding="utf-8"))
            if old != json.loads(json.dumps(fingerprint)):
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != json.loads(json.dumps(fingerprint)).get(k))
                raise PreselError(f"{work} holds an unfinished run with other settings ({', '.join(diff)} differ); "
                                  "rerun with the same settings to resume it, or delete that folder to start over")
        else:
            write_json(fp_path, fingerprint)
        write_jsonl(work / "skipped.jsonl", tdata.skipped)
    if dist.world_size > 1:
        torch.distributed.barrier()

    # ---- model
    from presel.vlm.load import load_vlm
    from presel.vlm.render import collate

    torch.manual_seed(cfg.seed)
    base, processor = load_vlm(model_path, dtype=train_dtype, device=device)
    net, info = prepare_model(base, cfg, gradient_checkpointing=gc_on)
    net.train()
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    groups = []
    lrs = {"language": cfg.lr, "projector": cfg.projector_lr, "vision": cfg.lr}
    for gname, names in info["groups"].items():
        if names:
            groups.append({"params": [params[n] for n in names], "lr": lrs[gname], "name": gname,
                           "weight_decay": cfg.weight_decay})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay,
                                  **({"fused": True} if on_cuda else {}))
    plan = StepPlan(len(tdata.samples), cfg.batch_size, cfg.grad_accum, dist.world_size, cfg.seed)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * plan.steps_per_epoch
    warmup = math.ceil(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.scheduler, warmup, total))

    start, elapsed_before, resumed_from = 0, 0.0, None
    totals = {"tokens": 0, "response_tokens": 0}
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        state = load_checkpoint(last, params, optimizer, scheduler, device)
        start, elapsed_before, resumed_from = int(state["step"]), float(state["elapsed"]), int(state["step"])
        totals = {k: int(state.get(k, 0)) for k in totals}
        if dist.main:
            _trim_log(log_path, start)
            if cfg.log_every:
                print(f"finetune: resuming from step {start}/{total} ({last})", file=sys.stderr)
    elif dist.main and log_path.exists():
        _trim_log(log_path, 0)

    ddp = None
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(net, device_ids=[device] if on_cuda else None)
    runner = ddp if ddp is not None else net

    pad_id = _pad_token_id(processor)
    from presel.vlm.render import with_chat_format

    dataset = ConversationDataset(tdata, with_chat_format(processor, cfg.effective_chat_format), max_length=cfg.max_length)
    feats = _feature_cache(net, processor, image_features, cfg, dist)
    if feats is not None:
        from presel.vlm.image_features import CachedFeatureDataset

        dataset = CachedFeatureDataset(dataset, feats)
    keep_logits = ddp is None and _accepts_arg(net, "logits_to_keep")
    sampler = MicroBatchSampler(plan, start, total, dist.rank)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=functools.partial(collate, pad_token_id=pad_id, padding_side="right"), pin_memory=on_cuda,
        persistent_workers=False, prefetch_factor=2 if cfg.num_workers else None)
    batches = iter(loader)
    counts = sampler.counts()
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=_torch_dtype(train_dtype))
                if train_dtype != "fp32" else contextlib.nullcontext())
    t0 = time.perf_counter()
    first_loss = last_loss = None
    log_f = open(log_path, "a", encoding="utf-8") if dist.main else None  # noqa: SIM115
    try:
        for step in range(start, total):
            _reseed(cfg.seed, step, dist.rank)
            micro = [_to_device(next(batches), device) for _ in range(next(counts))]
            n_resp = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
            n_tok = sum(int(b["attention_mask"].sum()) for b in micro)
            stats = torch.tensor([n_resp, n_tok], dtype=torch.float64, device=device)
            if ddp is not None:
                torch.distributed.all_reduce(stats)
            g_resp, g_tok = int(stats[0]), int(stats[1])
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            for i, b in enumerate(micro):
                sync = ddp.no_sync() if ddp is not None and i < len(micro) - 1 else contextlib.nullcontext()
                with sync:
                    with autocast:
                        sums = _micro_loss(runner, net, b, feats, keep_logits)
                    loss = sums.float().sum() / max(g_resp, 1) * dist.world_size
                    loss.backward()
                loss_sum += sums.detach().double().sum()
                del sums, loss
            if ddp is not None:
                torch.distributed.all_reduce(loss_sum)
            grad_norm = None
            if cfg.max_grad_norm is not None:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm))
            lr_now = next(g["lr"] for g in optimizer.param_groups if g["name"] in ("language", "vision"))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            totals["tokens"] += g_tok
            totals["response_tokens"] += g_resp
            step_loss = float(loss_sum) / max(g_resp, 1)
            first_loss = step_loss if first_loss is None else first_loss
            last_loss = step_loss
            elapsed = elapsed_before + time.perf_counter() - t0
            row = {"step": done, "epoch": round(done / plan.steps_per_epoch, 4), "loss": step_loss,
                   "lr": lr_now, "tokens": g_tok, "response_tokens": g_resp, "grad_norm": grad_norm,
                   "elapsed": round(elapsed, 3)}
            if log_f is not None:
                log_f.write(json.dumps(row, sort_keys=True) + "\n")
                log_f.flush()
                os.fsync(log_f.fileno())
                if cfg.log_every and (done % cfg.log_every == 0 or done == total or done == start + 1):
                    print(f"finetune: step {done}/{total} loss {step_loss:.4f} lr {lr_now:.3g} "
                          f"{totals['tokens'] / max(elapsed, 1e-9):.0f} tok/s", file=sys.stderr)
            if cfg.save_every_steps and (done % cfg.save_every_steps == 0 or done == total):
                if dist.main:
                    save_checkpoint(ckpt_dir, done, params, optimizer, scheduler,
                                    {"step": done, "elapsed": elapsed, **totals}, keep=cfg.keep_checkpoints)
                if ddp is not None:
                    torch.distributed.barrier()
            if on_step is not None:
                on_step(row)
    finally:
        if log_f is not None:
            log_f.close()
    train_seconds = time.perf_counter() - t0
    peak = _peak_memory(device)

    if dist.main:
        from presel.finetune.merge import save_finetuned

        log_rows = [json.loads(x) for x in log_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_finetuned(net, processor, tmp, dtype=train_dtype if train_dtype != "fp32" else None)
            shutil.copyfile(log_path, tmp / "train_log.jsonl")
            write_jsonl(tmp / "skipped.jsonl", tdata.skipped)
            steps_now = total - start
            summary = {
                "mode": "full" if cfg.full else "lora", "model": model_name, "data": str(data),
                "chat_format": cfg.effective_chat_format,
                "samples": len(tdata.samples), "skipped": len(tdata.skipped), "steps": total,
                "steps_per_epoch": plan.steps_per_epoch, "global_batch": plan.global_batch,
                "world_size": dist.world_size, "device": device, "dtype": train_dtype,
                "gradient_checkpointing": gc_on, "resumed_from_step": resumed_from,
                "first_loss": log_rows[0]["loss"] if log_rows else first_loss,
                "final_loss": log_rows[-1]["loss"] if log_rows else last_loss,
                "tokens": totals["tokens"], "response_tokens": totals["response_tokens"],
                "train_seconds": round(elapsed_before + train_seconds, 3),
                "tokens_per_second_this_run": round(
                    sum(r["tokens"] for r in log_rows if r["step"] > start) / max(train_seconds, 1e-9), 2)
                if steps_now else None,
                "peak_memory_bytes": peak, "trainable_params": info["trainable_params"],
                "total_params": info["total_params"],
                "parts": dataclasses.asdict(info["parts"]),
            }
            write_json(tmp / "summary.json", summary)
            write_json(tmp / PRESEL_CONFIG,
                       resolved_config("finetune", cfg, data=str(data), model=model_name,
                                       image_root=str(image_root) if image_root is not None else None,
                                       default_task=default_task, world_size=dist.world_size))
        shutil.rmtree(work, ignore_errors=True)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return out


def _feature_cache(net: Any, processor: Any, folder: str | os.PathLike | None, cfg: FinetuneConfig,
                   dist: _Dist) -> Any:
    """An :class:`presel.vlm.image_features.ImageFeatures` when ``folder`` is given and the cache is exact
    here (frozen vision tower, one process, a LLaVA-style model); None otherwise."""
    if folder is None or not cfg.freeze_vision or dist.world_size > 1:
        return None
    from presel.vlm.image_features import ImageFeatures, supports

    return ImageFeatures(net, processor, folder) if supports(net) else None


def _accepts_arg(model: Any, name: str) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _micro_loss(runner: Any, net: Any, b: dict[str, Any], feats: Any, keep_logits: bool) -> Any:
    """Per-sample summed response loss of one micro-batch (as :func:`presel.vlm.render.response_loss`).

    With ``feats`` the image features come from the cache (``extras["image_features"]``); with ``keep_logits``
    the language-model head runs only at the positions that predict a response token of some sample."""
    import torch
    import torch.nn.functional as F

    from presel.vlm.render import IGNORE, response_loss

    extras = dict(b.get("extras", {}))
    cached = extras.pop("image_features", None)
    inputs = ({"inputs_embeds": feats.embed(net, b["input_ids"], cached)} if cached is not None
              else {"input_ids": b["input_ids"]})
    labels = b["labels"]
    keep = (labels[:, 1:] != IGNORE).any(dim=0).nonzero()[:, 0] if keep_logits else None
    if keep is None or not len(keep):
        outputs = runner(**inputs, attention_mask=b["attention_mask"], **extras, use_cache=False)
        return response_loss(outputs.logits, labels)[0]
    outputs = runner(**inputs, attention_mask=b["attention_mask"], **extras, use_cache=False, logits_to_keep=keep)
    target = labels[:, keep + 1]
    mask = target != IGNORE
    nll = F.cross_entropy(outputs.logits[mask].float(), target[mask], reduction="none")
    return torch.zeros(labels.shape[0], dtype=torch.float32, device=nll.device).index_add(0, mask.nonzero()[:, 0], nll)


def _pad_token_id(processor: Any) -> int:
    tok = getattr(processor, "tokenizer", processor)
    pid = getattr(tok, "pad_token_id", None)
    if pid is None:
        pid = getattr(tok, "eos_token_id", None)
    if pid is None:
        raise PreselError("the model's tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pid)


def _to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

    def mv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, dict):
            return {k: mv(x) for k, x in v.items()}
        return v

    return {k: mv(v) for k, v in batch.items()}
