"""The run config of ``presel run``: ``out``, ``pool``, one section per stage, ``estimate``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.pipeline.base import require_path

POOL_KEYS = ("path", "image_root", "image_column", "task_field", "task_map", "task_rules", "default_task", "id_field")
POOL_PATHS = ("path", "image_root", "task_map")
EXTRA_SECTIONS = ("out", "pool", "estimate")
# top-level settings written into the section of every stage that takes a key of that name (a field of its
# config dataclass or one of its declared keys), unless the section sets its own: a new one is one name here
RUN_SETTINGS: tuple[str, ...] = ("protocol",)


def norm_section(section: Any, name: str, source: str) -> dict[str, Any]:
    """A section as a dict with ``_`` keys (``save-every-steps`` and ``save_every_steps`` are the same key)."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise PreselError(f"{source}: section '{name}' must be a mapping of settings, got {type(section).__name__}; "
                          f"write it as `{name}: {{key: value}}` (or `{name}: {{}}` for the defaults)")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


@dataclass
class RunConfig:
    """A whole run. Stage sections are plain dicts, validated by each stage's own config class."""

    out: Path
    pool: dict[str, Any]
    sections: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    source: str = "config"
    base_dir: Path = Path(".")
    settings: dict[str, Any] = field(default_factory=dict)  # RUN_SETTINGS given at the top level
    protocol: str = "paper"  # paper | official (presel.protocol); reaches every stage that has one

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config", base_dir: Path | None = None,
                  out: str | None = None) -> RunConfig:
        from presel.pipeline.registry import REGISTRY, STAGES
        from presel.protocol import DEFAULT_PROTOCOL, check_protocol

        known = {*EXTRA_SECTIONS, *RUN_SETTINGS, *STAGES}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PreselError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        base = Path(base_dir) if base_dir is not None else Path(".")
        out_v = out or data.get("out")
        if not out_v:
            raise PreselError(f"{source}: 'out' (the run directory) is missing; add `out: runs/NAME` or pass --out")
        if not isinstance(out_v, (str, os.PathLike)):
            raise PreselError(f"{source}: out={out_v!r} must be a folder path; write e.g. `out: runs/NAME`")
        pool = norm_section(data.get("pool"), "pool", source)
        if not pool.get("path"):
            raise PreselError(f"{source}: 'pool.path' is missing; name the pool manifest (or image folder)")
        sections = {s: (norm_section(data[s], s, source) if data.get(s) is not None else None)
                    for s in (*STAGES, "estimate") if s in data}
        settings = {k: data[k] for k in RUN_SETTINGS if k in data}
        if "protocol" in settings:
            try:
                check_protocol(settings["protocol"])
            except PreselError as e:
                raise PreselError(f"{source}: {e}") from None
        for stage in REGISTRY:
            sec = sections.get(stage.name)
            if sec is not None:
                for k, v in settings.items():
                    if k in stage.accepts(sec):
                        sec.setdefault(k, v)
        return cls(Path(out_v) if Path(out_v).is_absolute() else base / out_v, pool, sections, source, base,
                   settings, str(settings.get("protocol", DEFAULT_PROTOCOL)))

    @classmethod
    def load(cls, path: str | Path, *, out: str | None = None) -> RunConfig:
        from presel.config import load_yaml

        path = Path(path)
        return cls.from_dict(load_yaml(path), source=str(path), base_dir=path.parent, out=out)

    def path(self, value: str | os.PathLike | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if value is None or (isinstance(value, str) and value == ""):
            return None
        if not isinstance(value, str | os.PathLike):
            from presel.io.text import short

            raise PreselError(f"{self.source}: {short(value)} ({type(value).__name__}) is given where a path is "
                              "expected; write the path as a string")
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    def section(self, name: str) -> dict[str, Any] | None:
        return self.sections.get(name)

    def stage_dir(self, name: str) -> Path:
        from presel.pipeline.registry import STAGE_DIRS

        return self.out / STAGE_DIRS[name]

    def check_pool(self) -> None:
        """Unknown pool keys and missing pool files, before anything runs."""
        unknown = sorted(set(self.pool) - set(POOL_KEYS))
        if unknown:
            raise PreselError(f"{self.source}: unknown pool setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(POOL_KEYS)}")
        for key in POOL_PATHS:
            require_path(self, "pool", key, self.pool.get(key))
        rules = self.pool.get("task_rules")
        if isinstance(rules, str):
            require_path(self, "pool", "task_rules", rules)

    def check_estimate(self) -> None:
        """The ``estimate`` section: measured throughputs, each a number > 0 under a known name."""
        from presel.assumed import ASSUMED

        for key, value in (self.sections.get("estimate") or {}).items():
            if key not in ASSUMED:
                raise PreselError(f"{self.source}: unknown setting(s) {key} in 'estimate'; known: {', '.join(ASSUMED)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise PreselError(f"{self.source}: estimate.{key}={value!r} must be a number > 0 (a measured "
                                  "throughput per second)")
