"""The three parts of a vision-language model (language model, vision tower, projector), found by module name.

A leaf module: fine-tuning (which parts to train or freeze) and the image-feature cache (where the frozen
tower ends) both ask it, so neither imports the other."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from presel.errors import PreselError

VISION_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder", "vision")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger", "visual_projection",
                   "vision_projection", "mlp1", "projector", "aligner")
LANGUAGE_NAMES = ("language_model", "text_model", "llm", "text_decoder")


@dataclass
class ModelParts:
    """Module names (as in ``model.named_modules()``) of the three parts of a VLM."""

    language: str
    vision: str | None
    projector: str | None


def find_parts(model: Any) -> ModelParts:
    """Locate the language model, vision tower and projector of an ``AutoModelForImageTextToText`` model."""
    names = dict(model.named_modules())
    by_id = {id(m): n for n, m in names.items()}

    def shortest(candidates: tuple[str, ...], exclude: str | None = None) -> str | None:
        found = [n for n in names if n and n.rsplit(".", 1)[-1] in candidates
                 and not (exclude and (n == exclude or n.startswith(exclude + ".")))]
        return min(found, key=lambda n: (n.count("."), n)) if found else None

    language = None
    with contextlib.suppress(Exception):
        dec = model.get_decoder()
        language = by_id.get(id(dec)) if dec is not None and dec is not model else None
    language = language or shortest(LANGUAGE_NAMES)
    if not language:
        raise PreselError(f"{type(model).__name__}: cannot find the language model inside the VLM "
                          f"(looked for {', '.join(LANGUAGE_NAMES)}); this architecture is not supported for fine-tuning")
    vision = shortest(VISION_NAMES, exclude=language)
    projector = shortest(PROJECTOR_NAMES, exclude=language)
    return ModelParts(language, vision, projector)
