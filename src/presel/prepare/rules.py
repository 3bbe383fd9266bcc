"""Built-in rules that tell the sources of ``llava_v1_5_mix665k.json`` apart, and the source -> task table.

The file carries no source field. A record's source follows from its image folder and the wording of its
first human turn (LLaVA-1.5 paper, Table 7; exact counts from haotian-liu/LLaVA#702). Decision order
(see docs/reproduce.md; the maintainer's per-source counts are in haotian-liu/LLaVA issue #702):

1. no ``image`` key                               -> ``sharegpt`` (text-only: counted, dropped)
2. prefix ``gqa/``, ``ocr_vqa/``, ``textvqa/``, ``vg/`` -> ``gqa``, ``ocrvqa``, ``textcaps``, ``vg``
3. ``coco/`` + a region prompt in the first human turn   -> ``refcoco``
4. ``coco/`` + the option-letter suffix                  -> ``aokvqa``
5. ``coco/`` + the single-word-or-phrase suffix          -> ``vqav2_okvqa`` (the two cannot be told apart)
6. any other ``coco/`` record                            -> LLaVA-Instruct-158K, split further:
   more than one QA pair -> ``llava_conversation``; one QA pair whose question is one of the
   detailed-description prompts -> ``llava_detail``; any other single QA pair -> ``llava_complex``.

Step 6's split is an inference (conversation records are multi-turn, detail/complex single-turn; the
detail prompts are a fixed list). Rules 1-5 reproduce the #702 per-source counts on the real file; the
three-way split of LLaVA-158K is unverified. The source -> task mapping is data
(``llava665k_tasks.yaml``), so a user can merge or rename tasks without touching code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError

# exact per-source record counts of llava_v1_5_mix665k.json (haotian-liu/LLaVA#702, maintainer comment)
COUNTS_702: dict[str, int] = {
    "llava_instruct_158k": 157_712,
    "sharegpt": 40_688,
    "vqav2": 82_783,
    "gqa": 72_140,
    "okvqa": 8_998,
    "ocrvqa": 80_000,
    "aokvqa": 66_160,
    "textcaps": 21_953,
    "refcoco": 48_447,
    "vg": 86_417,
}
TOTAL_702 = 665_298

# the sources the rules can name (VQAv2 and OKVQA share one; LLaVA-158K is split three ways)
SOURCES = ("llava_conversation", "llava_detail", "llava_complex", "vqav2_okvqa", "aokvqa", "refcoco",
           "gqa", "ocrvqa", "textcaps", "vg")
COCO_SOURCES = SOURCES[:6]  # what rules 3-6 can return for a coco/ record
TEXT_ONLY = "sharegpt"
COCO = "coco"  # a prefix mapped to this keyword is split by prompt (rules 3-6)

# the #702 counts expressed over SOURCES (LLaVA-158K only as a whole)
EXPECTED_702: dict[str, int] = {
    "llava_instruct_158k": COUNTS_702["llava_instruct_158k"],
    "vqav2_okvqa": COUNTS_702["vqav2"] + COUNTS_702["okvqa"],
    **{s: COUNTS_702[s] for s in ("aokvqa", "refcoco", "gqa", "ocrvqa", "textcaps", "vg")},
}
LLAVA_SUBSOURCES = ("llava_conversation", "llava_detail", "llava_complex")

VQA_SUFFIX = "Answer the question using a single word or phrase."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
REGION_DESCRIBE = "Please provide a short description for this region:"
REGION_BBOX = "Please provide the bounding box coordinate of the region this sentence describes:"

# LLaVA-Instruct detail_23k questions (from quoted records and converters; the list is [inferred])
DETAIL_PROMPTS = (
    "Describe the following image.",
    "Describe the following scene.",
    "What do you see happening in this image?",
    "What do you think is going on in this snapshot?",
    "Can you elaborate on the elements of the picture provided?",
    "Write a detailed description of the given image.",
    "Explain the visual content of the image in great detail.",
    "Analyze the image in a comprehensive and detailed manner.",
    "Can you describe the main features of this image for me?",
    "What are the key elements in this picture?",
    "What's happening in the scene?",
    "What is this photo about?",
)

_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text.replace("<image>", " ")).strip().lower()


_DETAIL_SET = frozenset(_norm(p) for p in DETAIL_PROMPTS)
_VQA_SUFFIX_L = VQA_SUFFIX.lower()
_MC_SUFFIX_L = MC_SUFFIX.lower()
_REGION_L = (REGION_DESCRIBE.lower().rstrip(":"), REGION_BBOX.lower().rstrip(":"))

DEFAULT_TABLE = Path(__file__).with_name("llava665k_tasks.yaml")


def coco_source(first_human: str, n_turns: int) -> str:
    """Source of a ``coco/`` record from its first human turn and its number of turns (rules 3-6)."""
    q = first_human.lower()
    if _REGION_L[0] in q or _REGION_L[1] in q:
        return "refcoco"
    if _MC_SUFFIX_L in q:
        return "aokvqa"
    if _VQA_SUFFIX_L in q:
        return "vqav2_okvqa"
    if n_turns > 2:
        return "llava_conversation"
    if _norm(first_human) in _DETAIL_SET:
        return "llava_detail"
    return "llava_complex"


@dataclass(frozen=True)
class TaskTable:
    """Image-prefix -> source rules (first match wins) and the source -> task mapping."""

    prefixes: tuple[tuple[str, str], ...]
    tasks: dict[str, str]
    source: str = "built-in"

    @property
    def task_order(self) -> list[str]:
        return list(dict.fromkeys(self.tasks.values()))

    def source_of(self, image: str, first_human: str, n_turns: int) -> str | None:
        """The record's source, or None if no prefix rule matches its image path."""
        key = image.replace("\\", "/")
        while key.startswith("./"):
            key = key[2:]
        for prefix, src in self.prefixes:
            if key.startswith(prefix):
                return coco_source(first_human, n_turns) if src == COCO else src
        return None

    def task_of(self, source: str) -> str:
        return self.tasks[source]


def load_task_table(path: str | os.PathLike | None = None) -> TaskTable:
    """Read a task table YAML (``prefixes:`` prefix -> source, ``tasks:`` source -> task); None = the default."""
    import yaml

    p = Path(path) if path is not None else DEFAULT_TABLE
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PreselError(f"{p}: tasks config not found; check --tasks-config") from None
    except yaml.YAMLError as e:
        raise PreselError(f"{p}: not valid YAML ({getattr(e, 'problem', e)}); fix the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("prefixes"), dict) or not isinstance(data.get("tasks"), dict):
        raise PreselError(f"{p}: a tasks config is a mapping with 'prefixes' (image prefix -> source) and "
                          "'tasks' (source -> task); see the shipped presel/prepare/llava665k_tasks.yaml")
    unknown = sorted(set(data) - {"prefixes", "tasks"})
    if unknown:
        raise PreselError(f"{p}: unknown key(s) {', '.join(unknown)}; known: prefixes, tasks")
    prefixes = tuple((str(k), str(v)) for k, v in data["prefixes"].items())
    tasks = {str(k): str(v) for k, v in data["tasks"].items() if v is not None}
    for prefix, _src in prefixes:
        if not prefix or prefix.startswith("/"):
            raise PreselError(f"{p}: prefix '{prefix}' must be a relative image path prefix such as 'coco/'")
    produced = set()
    for _prefix, src in prefixes:
        produced.update(COCO_SOURCES if src == COCO else (src,))
    missing = sorted(produced - set(tasks))
    if missing:
        raise PreselError(f"{p}: no task for source(s) {', '.join(missing)}; add them under 'tasks:' "
                          "(several sources may map to one task)")
    for src, task in tasks.items():
        if not task.strip():
            raise PreselError(f"{p}: source '{src}' maps to an empty task name; give it a name")
    return TaskTable(prefixes, tasks, str(p))
