"""``presel run --dry-run``: the stages of a config with their sizes, GPU-hours and instruction cost.

GPU-hours come from throughputs per stage. Where presel's benchmarks measured one on a GPU, put it
in the config's ``estimate`` section (same keys as ``ASSUMED``); otherwise the assumed figures
below are used and printed as assumptions, so an estimate never pretends to be a measurement.
"""

from __future__ import annotations

from presel.assumed import ASSUMED, TOKENS, prompt_tokens  # noqa: F401 - the assumptions live there
from presel.pipeline import RunConfig
from presel.pipeline.base import Sizes


def read_throughputs(path: str) -> dict[str, float]:
    """Measured throughputs from a JSON file (``scripts/gpu-check.sh`` writes ``throughputs.json``): an
    object whose keys are those of ``ASSUMED``; other keys are an error, so a typo is not silently ignored."""
    import json

    from presel.errors import PreselError

    try:
        data = json.loads(open(path, encoding="utf-8").read())
    except OSError as e:
        raise PreselError(f"--throughputs {path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise PreselError(f"--throughputs {path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise PreselError(f"--throughputs {path}: must be a JSON object of {{name: per-second figure}}")
    out = {}
    for k, v in data.items():
        if k not in ASSUMED:
            raise PreselError(f"--throughputs {path}: unknown key '{k}'; known: {', '.join(sorted(ASSUMED))}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise PreselError(f"--throughputs {path}: '{k}' must be a number > 0, got {v!r}")
        out[k] = float(v)
    return out


def _rows(cfg: RunConfig, sizes: Sizes) -> list[tuple[str, str, float, float]]:
    """(stage, what, GPU-hours, cost) of every stage in the config, from each stage's own ``estimate()``, in the
    registry's order (a stage with none still shows)."""
    from presel.pipeline.base import Context
    from presel.pipeline.registry import REGISTRY

    ctx = Context(cfg, lambda: None)
    rows = []
    for cls in REGISTRY:
        if cls.name not in cfg.sections:
            continue
        e = cls(ctx, cfg.sections[cls.name] or {}).estimate(sizes)
        rows.append((cls.name, e.what, e.hours, e.cost) if e is not None else
                    (cls.name, "no estimate for this stage", 0.0, 0.0))
    return rows


def dry_run(cfg: RunConfig, throughputs: dict[str, float] | None = None) -> str:
    """The plan of ``cfg``; ``throughputs`` (e.g. from :func:`read_throughputs`) override the config's
    ``estimate`` section, which overrides ``ASSUMED``."""
    S = cfg.sections
    est = dict(ASSUMED)
    measured = set()
    extra = {**(cfg.sections.get("estimate") or {}), **(throughputs or {})}
    for k, v in extra.items():
        if k in est:
            est[k] = float(v)
            measured.add(k)
    from presel.config import from_dict
    from presel.importance.reference import ReferenceConfig, sample_reference
    from presel.pipeline import Pipeline
    from presel.selection.select import SelectConfig, _budget

    pool = Pipeline(cfg, log=lambda s: None).pool()  # a dry run needs the pool: its sizes are the point
    n_img = len(pool.distinct_images())
    tasks = pool.tasks
    ref_sec = dict(S.get("reference") or {})
    if "reference" in S:
        n_ref = len(sample_reference(pool, from_dict(ReferenceConfig, ref_sec, source=f"{cfg.source}: reference")))
    elif (S.get("select") or {}).get("reference"):
        from presel.io.manifest import read_id_list

        n_ref = len(set(read_id_list(cfg.path(S["select"]["reference"]))))
    else:
        n_ref = 0
    sel = {k: v for k, v in (S.get("select") or {}).items() if k not in ("features", "feature_ids", "weights", "reference")}
    budget = _budget(from_dict(SelectConfig, sel, source=f"{cfg.source}: select"), n_img) if "select" in S else 0
    n_new = max(0, budget - n_ref)
    unit = "images"
    if "select" in S and sel.get("protocol") == "official":  # the authors' code counts records
        from presel.selection.official import new_picks_official

        scfg = from_dict(SelectConfig, sel, source=f"{cfg.source}: select")
        n_new = max(0, new_picks_official(len(pool.records), scfg.budget, scfg.budget_count, n_ref))
        budget, unit = n_ref + n_new, "records"
    lines = [f"run: {cfg.out}", f"pool: {cfg.path(cfg.pool['path'])}"]
    lines.append(f"  {len(pool.records):,} image records, {n_img:,} distinct images, {len(tasks)} tasks, "
                 f"{pool.text_only:,} text-only records left out")
    rows = _rows(cfg, Sizes(len(pool.records), n_img, list(tasks), n_ref, budget, n_new, unit, est))
    cost = sum(c for _, _, _, c in rows)
    lines.append("")
    lines.append(f"{'stage':12s} {'GPU-hours':>10s}  what")
    for stage, what, h, _ in rows:
        lines.append(f"{stage:12s} {h:10.2f}  {what}")
    sel_h = sum(h for s, _, h, _ in rows if s in ("ref_model", "score", "embed"))
    lines.append(f"{'total':12s} {sum(h for _, _, h, _ in rows):10.2f}  (selection cost: {sel_h:.1f} GPU-hours; "
                 f"instruction cost ${cost:,.2f})")
    assumed = sorted(set(est) - measured)
    if assumed:
        lines.append("")
        lines.append("assumed throughputs (not measured here; set them in an 'estimate' section of the config):")
        for k in assumed:
            lines.append(f"  {k} = {est[k]:g}")
    return "\n".join(lines)
