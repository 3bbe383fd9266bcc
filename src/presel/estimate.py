"""``presel run --dry-run``: the stages of a config with their sizes, GPU-hours and instruction cost.

GPU-hours come from throughputs per stage. Where presel's benchmarks measured one on a GPU, put it
in the config's ``estimate`` section (same keys as ``ASSUMED``); otherwise the assumed figures
below are used and printed as assumptions, so an estimate never pretends to be a measurement.
"""

from __future__ import annotations

from presel.assumed import ASSUMED  # noqa: F401 - the figures live in a data-only module
from presel.pipeline import RunConfig

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


def _hours(n: float, per_s: float) -> float:
    return n / per_s / 3600.0


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
    frac = float(ref_sec.get("fraction", 0.05))
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
    rows: list[tuple[str, str, float]] = []

    def add(stage: str, what: str, hours: float) -> None:
        rows.append((stage, what, hours))

    if "reference" in S:
        add("reference", f"{n_ref:,} images to annotate ({frac:.0%} per task, at least 1)", 0.0)
    if "annotate" in S:
        add("annotate", f"{n_ref:,} reference instructions", 0.0)
    if "ref_model" in S:
        ep = int((S["ref_model"] or {}).get("epochs", 1))
        add("ref_model", f"fine-tune {S['ref_model'].get('model')} on {n_ref:,} samples x {ep} epoch(s)",
            _hours(n_ref * ep, est["finetune_samples_per_s"]))
    if "score" in S:
        add("score", f"IRS: {n_ref:,} samples x 2 passes", _hours(n_ref, est["score_samples_per_s"]))
    if "weights" in S:
        add("weights", f"softmax over {len(tasks)} task scores, tau = 1/sqrt({len(tasks)})", 0.0)
    if "embed" in S:
        add("embed", f"{(S['embed'] or {}).get('model', 'facebook/dinov2-base')} on {n_img:,} distinct images",
            _hours(n_img, est["embed_images_per_s"]))
    if "select" in S:
        add("select", f"budget {budget:,} {unit} = {n_ref:,} reference + {n_new:,} new (CPU, minutes)", 0.0)
    cost = 0.0
    if "generate" in S:
        g = S["generate"] or {}
        if g.get("from_annotations"):
            add("generate", f"oracle: {n_new:,} instructions taken from {g['from_annotations']} (no cost)", 0.0)
        else:
            pin, pout = float(g.get("price_in", 0.0)), float(g.get("price_out", 0.0))
            tin = prompt_tokens(g)
            cost = n_new * (tin * pin + TOKENS["response"] * pout) / 1e6
            add("generate", f"{n_new:,} instructions with {g.get('model')} (~{tin} in / {TOKENS['response']} "
                f"out tokens each): ${cost:,.2f} at ${pin}/{pout} per 1M tokens", _hours(n_new, est["generate_samples_per_s"]))
    if "final_model" in S:
        ep = int((S["final_model"] or {}).get("epochs", 1))
        add("final_model", f"fine-tune {S['final_model'].get('model')} on {budget:,} samples x {ep} epoch(s)",
            _hours(budget * ep, est["finetune_samples_per_s"]))
    if "report" in S:
        add("report", "HTML report", 0.0)
    # the one list of stages: a stage without a row above still shows
    from presel.pipeline.registry import STAGES

    listed = {r[0] for r in rows}
    rows += [(s, "no estimate for this stage", 0.0) for s in STAGES if S.get(s) is not None and s not in listed]
    rows.sort(key=lambda r: STAGES.index(r[0]))
    lines.append("")
    lines.append(f"{'stage':12s} {'GPU-hours':>10s}  what")
    for stage, what, h in rows:
        lines.append(f"{stage:12s} {h:10.2f}  {what}")
    sel_h = sum(h for s, _, h in rows if s in ("ref_model", "score", "embed"))
    lines.append(f"{'total':12s} {sum(h for _, _, h in rows):10.2f}  (selection cost: {sel_h:.1f} GPU-hours; "
                 f"instruction cost ${cost:,.2f})")
    assumed = sorted(set(est) - measured)
    if assumed:
        lines.append("")
        lines.append("assumed throughputs (not measured here; set them in an 'estimate' section of the config):")
        for k in assumed:
            lines.append(f"  {k} = {est[k]:g}")
    return "\n".join(lines)
