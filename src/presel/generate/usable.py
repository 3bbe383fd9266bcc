"""Success on nothing is no success: a generation whose every finished item failed exits 3 with the counts."""

from __future__ import annotations

from typing import Any

from presel.errors import NothingUsable


def check_usable(summary: dict[str, Any], out: Any, *, allow_partial: bool = False) -> None:
    """Raise :class:`NothingUsable` when items were tried, none succeeded and some failed (unless
    ``allow_partial``)."""
    generated, failed = int(summary.get("generated") or 0), int(summary.get("failed") or 0)
    if allow_partial or generated or not failed:
        return
    kinds = summary.get("failures_by_kind") or {}
    by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "see failures.jsonl"
    pending = int(summary.get("pending") or 0)
    raise NothingUsable(f"finished, nothing usable: 0 of {summary.get('selected', 0)} selected item(s) generated, "
                        f"{failed} failed ({by_kind})" + (f", {pending} not tried" if pending else "")
                        + f"; see {out}/failures.jsonl, fix the cause (server, model, templates, result files) and "
                        "rerun with --retry-failed, or pass --allow-partial to accept an empty result")
