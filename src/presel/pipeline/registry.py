"""The stages of ``presel run``, in order: the only list of them.

Adding a stage = one module in ``presel/pipeline/stages/`` with a :class:`~presel.pipeline.base.Stage`
subclass, and one line here.
"""

from __future__ import annotations

from pathlib import Path

from presel.pipeline.base import Stage
from presel.pipeline.stages.annotate import Annotate
from presel.pipeline.stages.dedup import Dedup
from presel.pipeline.stages.embed import Embed
from presel.pipeline.stages.finetune import FinalModel, RefModel
from presel.pipeline.stages.generate import Generate
from presel.pipeline.stages.reference import Reference
from presel.pipeline.stages.report import Report
from presel.pipeline.stages.score import Score
from presel.pipeline.stages.select import Select
from presel.pipeline.stages.weights import Weights

REGISTRY: tuple[type[Stage], ...] = (
    Reference,
    Annotate,
    RefModel,
    Score,
    Weights,
    Embed,
    Dedup,
    Select,
    Generate,
    FinalModel,
    Report,
)

STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
STAGE_DIRS: dict[str, str] = {s.name: s.dir for s in REGISTRY}


def output_paths(run_dir: Path) -> dict[str, Path]:
    """Where each stage's declared outputs lie in a run directory (for readers such as the report)."""
    run_dir = Path(run_dir)
    return {name: run_dir / s.dir / rel if rel else run_dir / s.dir for s in REGISTRY for name, rel in s.outputs.items()}
