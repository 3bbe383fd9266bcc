"""The ``protocol`` setting: which reading of PreSel a stage follows.

- ``paper`` (default): the paper's text (Safaei et al., CVPR 2025, arXiv 2503.07591), counted in distinct
  images: the reference set is 5% of the distinct pool images (stratified by task, an image shared by tasks
  counted once), the budget counts distinct images, an image is picked at most once.
- ``official``: the authors' code (https://github.com/bardisafa/PreSel), counted in records: the reference
  set is 5% of each task's records, new picks are records (:mod:`presel.selection.official`), exactly the
  reference and picked records are trained, scoring and fine-tuning render LLaVA-1.5's conversation format
  (``chat_format: llava-v1``) unless told otherwise.

``docs/reproduce.md`` lists every point where the two differ.
"""

from __future__ import annotations

from presel.errors import PreselError

PROTOCOLS = ("paper", "official")
DEFAULT_PROTOCOL = "paper"


def check_protocol(value: object) -> str:
    if value not in PROTOCOLS:
        raise PreselError(f"protocol={value!r} must be one of {', '.join(PROTOCOLS)} (paper: the paper's text, counted "
                          "in distinct images; official: the authors' code, counted in records)")
    return str(value)


def default_chat_format(protocol: str, chat_format: str | None) -> str | None:
    """The chat format a stage renders with: the one given, else ``llava-v1`` under ``official``, else the model's own."""
    if chat_format is not None:
        return chat_format
    return "llava-v1" if protocol == "official" else None


def add_protocol_argument(p) -> None:
    p.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=list(PROTOCOLS),
                   help="paper: the paper's text, counted in distinct images (default); official: the authors' code, "
                        "counted in records (docs/reproduce.md lists the differences)")
