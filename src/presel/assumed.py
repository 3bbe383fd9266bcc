"""What ``presel run --dry-run`` assumes where a config measured nothing: throughputs (the run config checks its
``estimate`` section against these names) and the tokens of a generation request. Imports nothing of presel at
module level, so the run config and every stage can read it."""

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
TOKENS = {"prompt": 900, "response": 250}  # per generated instruction (image tokens + template; answer)
TEMPLATE_TOKENS = 150          # system + user prompt text of a template, roughly
TYPICAL_IMAGE = (640, 480)     # a COCO-sized image, the bulk of LLaVA-665K


def prompt_tokens(gen: dict) -> int:
    """Input tokens of one generation request: the template plus a typical image by the model's own rule
    (:mod:`presel.generate.image_tokens`, with the section's ``image_detail``)."""
    from presel.generate.image_tokens import image_tokens

    if not gen.get("model"):
        return TOKENS["prompt"]
    return TEMPLATE_TOKENS + image_tokens(*TYPICAL_IMAGE, model=str(gen["model"]),
                                          detail=str(gen.get("image_detail", "auto")))
