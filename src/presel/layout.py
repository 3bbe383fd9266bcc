"""Where things lie in a run directory of ``presel run``: data only, no imports, so that every reader (the report,
exports) and the pipeline itself take the folder names from here and none keeps a copy.

``STAGE_DIRS``: each stage's folder, in run order (the pipeline's registry lists the same stages in the same
order; a test checks it). A new stage adds its folder here.
"""

MARKER = ".presel-stage.json"  # a finished stage's marker, in its folder
PENDING = ".presel-pending"  # <run>/.presel-pending/<stage>.json: the record of a stage that began
TIMINGS = "timings.json"

STAGE_DIRS: dict[str, str] = {
    "reference": "reference",
    "annotate": "reference_annotated",
    "ref_model": "ref_model",
    "score": "irs",
    "weights": "weights",
    "embed": "features",
    "dedup": "dedup",
    "select": "selection",
    "generate": "generate",
    "final_model": "final_model",
    "report": "report",
}
