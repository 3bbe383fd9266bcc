"""``presel run``: every stage in order from one YAML config, each skipped when its output for
the same inputs and result-relevant settings exists.

Config shape (one section per stage; keys are the stage's CLI flags with ``_`` or ``-``)::

    out: runs/my-run
    pool: {path: pool.jsonl, image_root: ..., task_field: ..., task_rules: [...], id_field: id}
    reference: {fraction: 0.05, seed: 0}
    annotate: {annotations: annotations.json}      # instructions of the reference set (oracle / your annotators)
    ref_model: {model: llava-small, epochs: 1, ...}  # fine-tune the base VLM on the reference set
    score: {batch_size: 16}                          # IRS with the reference model
    weights: {tau: auto}
    embed: {model: dinov2-small, image_size: 112}
    select: {budget: 0.15, seed: 0}
    generate: {from_annotations: annotations.json}   # oracle mode; or base_url/model (mode: online|batch-file|batch-api)
    final_model: {model: llava-small}                # optional: fine-tune on the result
    report: {}
    estimate: {embed_images_per_s: 2400}             # optional: measured throughputs for --dry-run

A section that is absent (or ``null``) skips its stage, and so do the stages that need it,
except: without ``ref_model``, ``score`` uses ``score.model`` as the reference model; without
``score``/``weights``, selection uses ``select.task_weights`` (``uniform``/``size``).

Every section is validated before any stage runs. The stages are classes in
:mod:`presel.pipeline.stages`, listed once in :mod:`presel.pipeline.registry`; the resume protocol
(markers, pending records, what may be deleted) is :mod:`presel.pipeline.workdir`. See
docs/architecture.md.
"""

from presel.pipeline.base import Stage, StagePlan, Waiting
from presel.pipeline.config import RunConfig
from presel.pipeline.registry import REGISTRY, STAGE_DIRS, STAGES
from presel.pipeline.runner import Pipeline, run_config
from presel.pipeline.workdir import MARKER, fingerprint, read_marker, stage_key

__all__ = ["MARKER", "REGISTRY", "STAGES", "STAGE_DIRS", "Pipeline", "RunConfig", "Stage", "StagePlan", "Waiting",
           "fingerprint", "read_marker", "run_config", "stage_key"]
