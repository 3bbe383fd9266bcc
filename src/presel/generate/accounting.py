"""Requests, tokens and cost per task.

Every result and failure line carries the usage of the requests spent on that item (retries and
malformed answers included: they are billed too), so the totals are recomputed from the files on
disk and cover every run that contributed to an output directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def cost(tokens_in: int, tokens_out: int, price_in: float, price_out: float) -> float:
    """Cost with prices per 1M tokens."""
    return tokens_in / 1e6 * price_in + tokens_out / 1e6 * price_out


@dataclass
class TaskUsage:
    items: int = 0
    ok: int = 0
    failed: int = 0
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        u = usage or {}
        self.requests += int(u.get("requests") or 0)
        self.tokens_in += int(u.get("tokens_in") or 0)
        self.tokens_out += int(u.get("tokens_out") or 0)


@dataclass
class Accounting:
    price_in: float = 0.0   # per 1M input tokens
    price_out: float = 0.0  # per 1M output tokens
    tasks: dict[str, TaskUsage] = field(default_factory=dict)

    def task(self, name: str) -> TaskUsage:
        t = self.tasks.get(name)
        if t is None:
            t = self.tasks[name] = TaskUsage()
        return t

    def add_lines(self, lines: Iterable[dict[str, Any]]) -> None:
        for line in lines:
            self.task(str(line.get("task"))).add_usage(line.get("usage"))

    def table(self) -> dict[str, Any]:
        """``{"tasks": {task: {...}}, "total": {...}}`` with cost per task and in total."""
        out: dict[str, Any] = {}
        tot = TaskUsage()
        for name in sorted(self.tasks):
            t = self.tasks[name]
            out[name] = {"items": t.items, "ok": t.ok, "failed": t.failed, "requests": t.requests,
                         "tokens_in": t.tokens_in, "tokens_out": t.tokens_out,
                         "cost": round(cost(t.tokens_in, t.tokens_out, self.price_in, self.price_out), 6)}
            for k in ("items", "ok", "failed", "requests", "tokens_in", "tokens_out"):
                setattr(tot, k, getattr(tot, k) + getattr(t, k))
        total = {"items": tot.items, "ok": tot.ok, "failed": tot.failed, "requests": tot.requests,
                 "tokens_in": tot.tokens_in, "tokens_out": tot.tokens_out,
                 "cost": round(cost(tot.tokens_in, tot.tokens_out, self.price_in, self.price_out), 6),
                 "price_in_per_1m": self.price_in, "price_out_per_1m": self.price_out}
        return {"tasks": out, "total": total}
