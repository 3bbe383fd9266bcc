"""The stages of ``presel run``: each maps its config section to the library call of that stage.

Every stage reads its inputs from the run directory (or from paths in the config) and writes one
output directory; :mod:`presel.pipeline` decides what to skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from presel.config import from_dict
from presel.errors import PreselError
from presel.pipeline import Pipeline, StagePlan


def _only(cfg_source: str, stage: str, section: dict[str, Any], allowed: set[str]) -> None:
    """Sections that are not a config dataclass still reject unknown keys."""
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise PreselError(f"{cfg_source}: unknown setting(s) {', '.join(unknown)} in '{stage}'; "
                          f"known: {', '.join(sorted(allowed))}")


def reference_ids_path(run_out: Path) -> Path:
    return run_out / "reference" / "reference.jsonl"


def plan(p: Pipeline) -> list[StagePlan]:
    """The stages the config asks for, in order, with their inputs."""
    cfg = p.cfg
    S = cfg.sections
    out = cfg.out
    plans: list[StagePlan] = []
    pool_file = cfg.path(cfg.pool["path"])

    # ---- reference set -------------------------------------------------------------
    ref_path: Path | None = None
    if S.get("reference") is not None:
        sec = dict(S["reference"])
        ref_path = reference_ids_path(out)

        def run_reference(sec=sec) -> None:
            from presel.importance.reference import ReferenceConfig, reference_to_dir

            rc = from_dict(ReferenceConfig, sec, source=f"{cfg.source}: reference")
            reference_to_dir(p.pool(), cfg.stage_dir("reference"), fraction=rc.fraction, seed=rc.seed,
                             min_per_task=rc.min_per_task, overwrite=True, protocol=rc.protocol)

        plans.append(StagePlan("reference", sec, (), {"pool": pool_file}, run_reference))
    elif S.get("select") is not None and S["select"].get("reference"):
        ref_path = cfg.path(S["select"]["reference"])

    # ---- instructions of the reference set -------------------------------------------
    annotated: Path | None = None
    if S.get("annotate") is not None:
        sec = dict(S["annotate"])
        _only(cfg.source, "annotate", sec, {"annotations", "annotated", "match"})
        if sec.get("annotated"):  # the user's own annotated reference file
            annotated = cfg.path(sec["annotated"])
        else:
            if ref_path is None:
                raise PreselError(f"{cfg.source}: 'annotate' needs a reference set: add a 'reference' section")
            ann = cfg.path(sec.get("annotations"))
            if ann is None:
                raise PreselError(f"{cfg.source}: 'annotate' needs 'annotations' (a LLaVA file with the reference "
                                  "set's instructions) or 'annotated' (your annotated reference file)")
            annotated = cfg.stage_dir("annotate") / "train.json"

            def run_annotate(ann=ann, ref=ref_path) -> None:
                from presel.generate.oracle import oracle_to_dir

                oracle_to_dir(ref, ann, cfg.stage_dir("annotate"), match=sec.get("match", "auto"), overwrite=True)

            plans.append(StagePlan("annotate", sec, ("reference",), {"annotations": ann}, run_annotate))

    # ---- reference model -------------------------------------------------------------
    ref_model: str | None = None
    if S.get("ref_model") is not None:
        if annotated is None:
            raise PreselError(f"{cfg.source}: 'ref_model' fine-tunes on the annotated reference set: add an 'annotate' section")
        sec = dict(S["ref_model"])
        base = sec.get("model")
        if not base:
            raise PreselError(f"{cfg.source}: ref_model.model (the base VLM: hub id, directory or llava-small) is missing")
        ref_model = str(cfg.stage_dir("ref_model"))
        plans.append(StagePlan("ref_model", sec, ("annotate",), {"data": annotated},
                               _finetune_runner(p, sec, annotated, "ref_model"), resumable=True))

    # ---- IRS -------------------------------------------------------------------------
    irs_dir: Path | None = None
    if S.get("score") is not None:
        if annotated is None:
            raise PreselError(f"{cfg.source}: 'score' needs the annotated reference set: add an 'annotate' section")
        sec = dict(S["score"])
        model = sec.get("model") or ref_model
        if model is None:
            raise PreselError(f"{cfg.source}: score.model is missing and there is no 'ref_model' stage to score with")
        irs_dir = cfg.stage_dir("score")

        def run_score(sec=sec, model=model) -> None:
            from presel.cache import resolve_model
            from presel.importance.scoring import ScoreConfig, score_to_dir

            s = dict(sec)
            s["model"] = resolve_model(s.get("model") or model)
            s.setdefault("image_root", str(p.pool().image_root))
            score_to_dir(annotated, irs_dir, from_dict(ScoreConfig, s, source=f"{cfg.source}: score"))

        plans.append(StagePlan("score", sec, ("annotate", "ref_model"), {"data": annotated}, run_score, resumable=True))

    # ---- task weights ----------------------------------------------------------------
    weights_path: Path | None = None
    if S.get("weights") is not None:
        if irs_dir is None:
            raise PreselError(f"{cfg.source}: 'weights' needs IRS scores: add a 'score' section")
        sec = dict(S["weights"])
        _only(cfg.source, "weights", sec, {"tau"})
        weights_path = cfg.stage_dir("weights") / "task_weights.json"

        def run_weights(sec=sec) -> None:
            from presel.importance.weights import compute_weights, write_weights

            tau = sec.get("tau", "auto")
            if tau not in (None, "auto") and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau <= 0):
                raise PreselError(f"{cfg.source}: weights.tau={tau!r} must be 'auto' (1/sqrt(M)) or a number > 0")
            w = compute_weights(irs_dir, tau=None if tau in (None, "auto") else float(tau))
            write_weights(weights_path, w)

        plans.append(StagePlan("weights", sec, ("score",), {}, run_weights))
    elif S.get("select") is not None and S["select"].get("weights"):
        weights_path = cfg.path(S["select"]["weights"])

    # ---- features --------------------------------------------------------------------
    features_path: Path | None = None
    if S.get("embed") is not None:
        sec = dict(S["embed"])
        features_path = cfg.stage_dir("embed")

        def run_embed(sec=sec) -> None:
            from presel.features.extract import EmbedConfig, embed_pool

            embed_pool(p.pool(), features_path, from_dict(EmbedConfig, sec, source=f"{cfg.source}: embed"))

        plans.append(StagePlan("embed", sec, (), {"pool": pool_file}, run_embed, resumable=True))
    elif S.get("select") is not None and S["select"].get("features"):
        features_path = cfg.path(S["select"]["features"])

    # ---- selection -------------------------------------------------------------------
    selection: Path | None = None
    if S.get("select") is not None:
        sec = {k: v for k, v in S["select"].items() if k not in ("features", "feature_ids", "weights", "reference")}
        if features_path is None:
            raise PreselError(f"{cfg.source}: 'select' needs features: add an 'embed' section or select.features")
        ids_path = cfg.path(S["select"].get("feature_ids"))
        selection = cfg.stage_dir("select") / "selection.parquet"
        if weights_path is None and sec.get("task_weights", "irs") == "irs":
            raise PreselError(f"{cfg.source}: select.task_weights is 'irs' but there are no task weights: add "
                              "'score' and 'weights' sections, give select.weights, or set task_weights: uniform|size")

        def run_select(sec=sec, ids_path=ids_path) -> None:
            from presel.io.features import load_features
            from presel.selection.select import SelectConfig, select_to_dir

            scfg = from_dict(SelectConfig, sec, source=f"{cfg.source}: select")
            select_to_dir(p.pool(), load_features(features_path, ids_path), weights_path, ref_path, scfg,
                          cfg.stage_dir("select"), overwrite=True)

        plans.append(StagePlan("select", sec, ("reference", "weights", "embed"),
                               {"weights": weights_path, "reference": ref_path, "features_ids": ids_path,
                                **({} if S.get("embed") is not None else {"features": features_path})},
                               run_select))

    # ---- instructions for the selection -------------------------------------------------
    train_json: Path | None = None
    if S.get("generate") is not None:
        if selection is None:
            raise PreselError(f"{cfg.source}: 'generate' needs a 'select' section")
        sec = dict(S["generate"])
        if sec.get("from_annotations"):
            _only(cfg.source, "generate", sec, {"from_annotations", "match", "format", "protocol"})
        train_json = cfg.stage_dir("generate") / "train.json"

        def run_generate(sec=sec) -> None:
            s = dict(sec)
            ann = cfg.path(s.pop("from_annotations", None))
            if ann is not None:
                from presel.generate.oracle import oracle_to_dir

                oracle_to_dir(selection, ann, cfg.stage_dir("generate"), reference_annotations=annotated,
                              overwrite=True, **s)
            else:
                from presel.generate.online import GenerateConfig, generate_to_dir

                s.pop("protocol", None)  # online generation writes one record per item under both protocols
                generate_to_dir(selection, cfg.stage_dir("generate"),
                                from_dict(GenerateConfig, s, source=f"{cfg.source}: generate"),
                                reference_annotations=annotated, image_root=p.pool().image_root)


        files = {"annotations": cfg.path(sec.get("from_annotations")),
                 # a user-given annotated reference file is an input too (the annotate stage's key covers its own)
                 "reference_annotations": annotated if (S.get("annotate") or {}).get("annotated") else None}
        plans.append(StagePlan("generate", sec, ("select", "annotate"), files, run_generate, resumable=True))

    # ---- final model -----------------------------------------------------------------
    if S.get("final_model") is not None:
        if train_json is None:
            raise PreselError(f"{cfg.source}: 'final_model' fine-tunes on the generated set: add a 'generate' section")
        sec = dict(S["final_model"])
        if not sec.get("model"):
            raise PreselError(f"{cfg.source}: final_model.model (the base VLM) is missing")
        plans.append(StagePlan("final_model", sec, ("generate",), {}, _finetune_runner(p, sec, train_json, "final_model"),
                               resumable=True))

    # ---- report ----------------------------------------------------------------------
    if S.get("report") is not None:
        _only(cfg.source, "report", S["report"], set())

        def run_report() -> None:
            from presel.report.html import build_report

            build_report(cfg.out, cfg.stage_dir("report") / "report.html")

        plans.append(StagePlan("report", dict(S["report"]), tuple(x.name for x in plans), {}, run_report))
    return plans


def _finetune_runner(p: Pipeline, sec: dict[str, Any], data: Path, stage: str):
    def run() -> None:
        from presel.finetune.train import FinetuneConfig, finetune

        s = dict(sec)
        model = s.pop("model")
        image_root = p.cfg.path(s.pop("image_root", None)) or p.pool().image_root
        cfg = from_dict(FinetuneConfig, s, source=f"{p.cfg.source}: {stage}")
        finetune(data, model, p.cfg.stage_dir(stage), cfg, image_root=image_root)

    return run
