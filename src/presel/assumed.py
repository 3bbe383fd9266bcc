"""Throughputs assumed by ``presel run --dry-run`` where a config measured none (data only: the run config checks
its ``estimate`` section against these names, :mod:`presel.estimate` uses the figures)."""

# Throughputs on one modern data-centre GPU (A100/H100 class), used when the config gives none.
ASSUMED: dict[str, float] = {
    # DINOv2-base [CLS] at 224 px, bf16, 16 decode workers (issue target for one H200: >= 2,000 img/s)
    "embed_images_per_s": 2000.0,
    # LoRA fine-tuning of a 7B LLaVA (~700 tokens/sample with 576 image tokens), bf16, ZeRO-2:
    # LLaVA-1.5-7B's 665K-sample epoch takes roughly 80 A100-hours -> ~2.3 samples/s per GPU
    "finetune_samples_per_s": 2.3,
    # IRS: two forward passes per sample, no backward (~3x a training step's throughput / 2 passes)
    "score_samples_per_s": 3.5,
    # instruction generation by a 7B VLM on vLLM, online or `vllm run-batch`
    "generate_samples_per_s": 8.0,
}
