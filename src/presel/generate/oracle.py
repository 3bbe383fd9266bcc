"""Oracle mode (the paper's benchmark protocol): the instructions of the selected images are taken from
an existing annotated dataset (LLaVA-665K, Vision-FLAN, ...) instead of being generated.

Matching (``match``): ``id`` (the selection id equals the annotation id), ``image`` (same normalised
image path; in the row's task when the annotations carry a ``task``/``task_name`` field, else every
record of that image), or ``auto`` (id, then image). Several annotation records for one selected
image are all kept (LLaVA-665K has several records per COCO image): the first keeps the selection id,
the others become ``<id>#1``, ``<id>#2``... A selected row without any annotation is a recorded failure
in ``failures.jsonl`` (counted in summary.json), never silently dropped.

Reference rows take their records from ``reference_annotations`` when given, else from the same
annotations file (in the benchmark protocol the full dataset annotates the reference set too).

``protocol="official"`` (the authors' code, https://github.com/bardisafa/PreSel): exactly the picked records
are trained, as their ``extract_and_add_samples`` keeps the reference records plus the picked ``unique_idx``.
Every row (reference and selected) takes the annotation record with its id (``match`` is ``id`` whatever is
passed: the rows are records), each record once; a row without that record is a recorded failure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.generate.store import MATCHES


@dataclass
class OracleConfig:
    annotations: str
    match: str = "auto"
    reference_annotations: str | None = None
    format: str = "llava"
    protocol: str = "paper"

    def __post_init__(self) -> None:
        from presel.protocol import check_protocol

        check_protocol(self.protocol)
        if self.match not in MATCHES:
            raise PreselError(f"match={self.match!r} must be one of {', '.join(MATCHES)}")
        if self.format not in ("llava", "sharegpt"):
            raise PreselError(f"format={self.format!r} must be llava or sharegpt")


def oracle_to_dir(selection_path: str | os.PathLike, annotations_path: str | os.PathLike, out: str | os.PathLike,
                  reference_annotations: str | os.PathLike | None = None, match: str = "auto", *,
                  format: str = "llava", overwrite: bool = False, protocol: str = "paper") -> dict[str, Any]:
    """Write ``out/`` (train.json, results.jsonl, failures.jsonl, summary.json, config.json) from annotations.

    Returns the summary. The output directory is written atomically (fast: no resume needed).
    """
    from presel.config import resolved_config
    from presel.generate.store import (
        load_annotations,
        read_selection,
        records_for_row,
        reference_records,
        write_train,
    )
    from presel.io.atomic import atomic_dir, write_json, write_jsonl

    cfg = OracleConfig(str(annotations_path), match,
                       None if reference_annotations is None else str(reference_annotations), format, protocol)
    rows = read_selection(selection_path)
    anns = load_annotations(annotations_path)
    ref = load_annotations(reference_annotations) if reference_annotations is not None else anns
    official = protocol == "official"
    ref_recs, ref_info = reference_records(rows, ref, "id" if official else match)
    train = list(ref_recs)
    emitted = {_record_key(r) for r in ref_recs}  # official: each annotation record trains once
    results, failures = [], []
    per_task: dict[str, dict[str, int]] = {}
    for row in rows:
        if row.source != "selected":
            continue
        t = per_task.setdefault(row.task, {"items": 0, "ok": 0, "failed": 0, "records": 0})
        t["items"] += 1
        if official:
            hits, why = anns.lookup(row, "id")
            recs, problems = _all_records(row, hits, emitted)
        else:
            hits, why = anns.lookup(row, match)
            recs, problems = records_for_row(row, hits)
        if recs or (official and hits and not problems):  # official: its records may be trained already
            t["ok"] += 1
            t["records"] += len(recs)
            train.extend(recs)
            results.append({"id": row.id, "image": row.image, "task": row.task, "records": len(recs),
                            "annotation_ids": [h["id"] for h in hits], "invalid": problems})
        else:
            t["failed"] += 1
            failures.append({"id": row.id, "image": row.image, "task": row.task, "kind": "no_annotation",
                             "error": why or ("; ".join(problems) or "annotations invalid")})
    n_sel = sum(t["items"] for t in per_task.values())
    if (n_sel and not results) or not train:  # success on nothing is no success
        ex = f" (e.g. id {failures[0]['id']}: {failures[0]['error']})" if failures else ""
        raise PreselError(f"{annotations_path}: none of the {n_sel} selected image(s) of {selection_path} matches an "
                          f"annotation with match={match}{ex}; pass the annotation file of this pool, or another --match")
    summary = {
        "mode": "oracle", "complete": True, "match": "id (exactly the picked records)" if official else match,
        "protocol": protocol, "annotations": str(annotations_path),
        "annotations_skipped": anns.skipped, "selected": n_sel, "generated": n_sel - len(failures),
        "failed": len(failures), "pending": 0, "failures_by_kind": {"no_annotation": len(failures)} if failures else {},
        "reference": ref_info, "tasks": dict(sorted(per_task.items())),
        "total": {"items": n_sel, "ok": n_sel - len(failures), "failed": len(failures), "requests": 0,
                  "tokens_in": 0, "tokens_out": 0, "cost": 0.0},
        "train_records": len(train),
    }
    if format == "hf-datasets":
        raise PreselError("oracle mode writes llava or sharegpt; make the datasets copy with presel prepare export "
                          "--to hf-datasets --train OUT/train.json --image-root IMAGE_ROOT")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        summary["outputs"] = write_train(tmp, train, format)
        write_jsonl(tmp / "results.jsonl", results)
        write_jsonl(tmp / "failures.jsonl", failures)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / "config.json", resolved_config("generate", cfg, mode="oracle",
                                                        inputs={"selection": str(selection_path)}))
    return summary


def _record_key(rec: dict[str, Any]) -> tuple[str, str, str]:
    from presel.records import image_key

    return str(rec["id"]), image_key(str(rec["image"])), str(rec.get("task"))


def _all_records(row, anns: list[dict[str, Any]], emitted: set[tuple[str, str, str]]
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """Training records of the annotations ``anns`` of ``row`` (``protocol: official``: the record with its id),
    under their own ids, each annotation record once (``emitted`` holds the keys already written)."""
    from presel.generate.parse import ParseError, validate_conversation

    out, problems = [], []
    for a in anns:
        rec = {"id": str(a["id"]), "image": row.image, "task": row.task}
        key = _record_key(rec)
        if key in emitted:
            continue
        try:
            conv = validate_conversation(a["conversations"])
        except ParseError as e:
            problems.append(f"annotation '{a['id']}': {e}")
            continue
        emitted.add(key)
        out.append({**rec, "conversations": conv})
    return out, problems
