"""``presel run``: every stage in order from one YAML config, each skipped when its output for
the same inputs and settings exists.

Config shape (one section per stage; keys are the stage's CLI flags with ``_`` or ``-``)::

    out: runs/my-run
    protocol: paper                                  # or official: the authors' code (docs/reproduce.md)
    pool: {path: pool.jsonl, image_root: ..., task_field: ..., task_rules: [...], id_field: id}
    reference: {fraction: 0.05, seed: 0}
    annotate: {annotations: annotations.json}      # instructions of the reference set (oracle / your annotators)
    ref_model: {model: llava-small, epochs: 1, ...}  # fine-tune the base VLM on the reference set
    score: {batch_size: 16}                          # IRS with the reference model
    weights: {tau: auto}
    embed: {model: dinov2-small, image_size: 112}
    select: {budget: 0.15, seed: 0}
    generate: {from_annotations: annotations.json}   # oracle mode, or base_url/model/templates
    final_model: {model: llava-small}                # optional: fine-tune on the result
    report: {}
    estimate: {embed_images_per_s: 2400}             # optional: measured throughputs for --dry-run

A section that is absent (or ``null``) skips its stage, and so do the stages that need it,
except: without ``ref_model``, ``score`` uses ``score.model`` as the reference model; without
``score``/``weights``, selection uses ``select.task_weights`` (``uniform``/``size``).

Each finished stage writes ``<stage dir>/.presel-stage.json`` with a key: a hash of its settings,
the keys of the stages it reads and the fingerprints of its input files. A rerun skips a stage whose
key matches; a changed setting reruns that stage and everything downstream of it. A failed stage
stops the run with its error; finished stages are kept, and stages that resume (embed, score,
generate, fine-tune) continue where they stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presel.errors import PreselError
from presel.io.atomic import dumps_json, write_json

STAGES = ("reference", "annotate", "ref_model", "score", "weights", "embed", "select", "generate",
          "final_model", "report")
STAGE_DIRS = {"reference": "reference", "annotate": "reference_annotated", "ref_model": "ref_model",
              "score": "irs", "weights": "weights", "embed": "features", "select": "selection",
              "generate": "generate", "final_model": "final_model", "report": "report"}
MARKER = ".presel-stage.json"


def _norm(section: Any, name: str, source: str) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise PreselError(f"{source}: section '{name}' must be a mapping of settings, got {type(section).__name__}")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


# --------------------------------------------------------------------------- protocol (top-level key)

PROTOCOL_STAGES = ("reference", "ref_model", "score", "select", "generate", "final_model")


def _apply_protocol(data: dict[str, Any], sections: dict[str, dict[str, Any] | None], source: str) -> str:
    """A top-level ``protocol:`` goes to every stage that has one, unless the stage's section sets its own."""
    from presel.protocol import DEFAULT_PROTOCOL, PROTOCOLS

    if "protocol" not in data:
        return DEFAULT_PROTOCOL
    value = data["protocol"]
    if value not in PROTOCOLS:
        raise PreselError(f"{source}: protocol={value!r} must be one of {', '.join(PROTOCOLS)}")
    for name in PROTOCOL_STAGES:
        sec = sections.get(name)
        if sec is not None:
            sec.setdefault("protocol", value)
    return str(value)


@dataclass
class RunConfig:
    """A whole run. Stage sections are plain dicts, validated by each stage's own config class."""

    out: Path
    pool: dict[str, Any]
    sections: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    source: str = "config"
    base_dir: Path = Path(".")
    protocol: str = "paper"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config", base_dir: Path | None = None,
                  out: str | None = None) -> RunConfig:
        known = {"out", "pool", "estimate", "protocol", *STAGES}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PreselError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        base = Path(base_dir) if base_dir is not None else Path(".")
        out_v = out or data.get("out")
        if not out_v:
            raise PreselError(f"{source}: 'out' (the run directory) is missing; add `out: runs/NAME` or pass --out")
        pool = _norm(data.get("pool"), "pool", source)
        if not pool.get("path"):
            raise PreselError(f"{source}: 'pool.path' is missing; name the pool manifest (or image folder)")
        sections = {s: (_norm(data[s], s, source) if data.get(s) is not None else None) for s in (*STAGES, "estimate") if s in data}
        protocol = _apply_protocol(data, sections, source)
        return cls(Path(out_v) if Path(out_v).is_absolute() else base / out_v, pool, sections, source, base, protocol)

    @classmethod
    def load(cls, path: str | Path, *, out: str | None = None) -> RunConfig:
        from presel.config import load_yaml

        path = Path(path)
        return cls.from_dict(load_yaml(path), source=str(path), base_dir=path.parent, out=out)

    def path(self, value: str | os.PathLike | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if value in (None, ""):
            return None
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    def section(self, name: str) -> dict[str, Any] | None:
        return self.sections.get(name)

    def stage_dir(self, name: str) -> Path:
        return self.out / STAGE_DIRS[name]


# --------------------------------------------------------------------------- fingerprints


def fingerprint(path: Path | None) -> str | None:
    """Content hash of a file (size + sha256 for files up to 256 MB, size + mtime beyond), or of a folder listing."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.name != MARKER:
                st = p.stat()
                h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()[:16]
    st = path.stat()
    if st.st_size > 256 * 2**20:
        return f"big:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def stage_key(name: str, settings: dict[str, Any], upstream: dict[str, str], files: dict[str, Path | None]) -> str:
    blob = dumps_json({"stage": name, "settings": settings, "upstream": upstream,
                       "files": {k: fingerprint(v) for k, v in files.items()}})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    return _read_json(stage_dir / MARKER)


def _fix(stage_dir: Path) -> str:
    return f"move it away, or choose another `out` for the run (presel writes its '{stage_dir.name}' stage there)"


def _check_stage_dir(stage_dir: Path) -> None:
    from presel.io.owned import check_deletable

    check_deletable(stage_dir, only=(MARKER,), what="stage folder", fix=_fix(stage_dir))


def _clean(stage_dir: Path, *, started: bool) -> None:
    """Remove a stage's output and its work leftovers beside it (``.<name>.tmp-*``, ``.<name>.old-*``,
    ``.<name>.finetune-work``), but only what presel can prove it wrote: a folder with the stage marker, or
    one this run's pending record (``started``) shows presel began writing; anything else stops the run."""
    from presel.io.owned import remove_owned

    owned = started or (stage_dir / MARKER).is_file()
    remove_owned(stage_dir, started=started, only=(MARKER,), what="stage folder", fix=_fix(stage_dir))
    if owned:
        for pat in (".tmp-*", ".old-*", ".finetune-work"):
            for p in stage_dir.parent.glob(f".{stage_dir.name}{pat}"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()


# --------------------------------------------------------------------------- the run


@dataclass
class StagePlan:
    name: str
    settings: dict[str, Any]
    needs: tuple[str, ...]
    files: dict[str, Path | None]
    run: Callable[[], Any]
    resumable: bool = False  # keep a partial output dir of the same key (the stage resumes)


class Pipeline:
    def __init__(self, cfg: RunConfig, *, log: Callable[[str], None] = print, force: tuple[str, ...] = ()):
        self.cfg = cfg
        self.log = log
        self.force = set(force)
        self.keys: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._pool = None

    # the pool is read once per run
    def pool(self):
        if self._pool is None:
            from presel.io.manifest import read_pool

            p = self.cfg.pool
            known = {"path", "image_root", "task_field", "task_map", "task_rules", "default_task", "id_field"}
            unknown = sorted(set(p) - known)
            if unknown:
                raise PreselError(f"{self.cfg.source}: unknown pool setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            self._pool = read_pool(self.cfg.path(p["path"]), image_root=self.cfg.path(p.get("image_root")),
                                   task_field=p.get("task_field"), task_map=self.cfg.path(p.get("task_map")),
                                   task_rules=p.get("task_rules"), default_task=p.get("default_task"),
                                   id_field=p.get("id_field", "id"))
        return self._pool

    def plan(self) -> list[StagePlan]:
        from presel import stages

        return stages.plan(self)

    def run(self) -> dict[str, float]:
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        pool_file = self.cfg.path(self.cfg.pool["path"])
        task_map = self.cfg.pool.get("task_map")
        rules = self.cfg.pool.get("task_rules")
        files = {"manifest": pool_file, "task_map": self.cfg.path(task_map) if task_map else None,
                 "task_rules": self.cfg.path(rules) if isinstance(rules, str) else None}
        self.keys["pool"] = stage_key("pool", self.cfg.pool, {}, files)
        plans = self.plan()
        if not plans:
            raise PreselError(f"{self.cfg.source}: no stage to run; add stage sections (reference, embed, select, ...)")
        for st in plans:  # before any work: refuse stage folders that are not presel's (never deleted)
            if _read_json(self.cfg.out / ".presel-pending" / f"{st.name}.json") is None:
                _check_stage_dir(self.cfg.stage_dir(st.name))
        timings_path = self.cfg.out / "timings.json"
        try:
            self.timings = json.loads(timings_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.timings = {}
        for i, st in enumerate(plans, 1):
            upstream = {n: self.keys[n] for n in ("pool", *st.needs) if n in self.keys}
            key = stage_key(st.name, st.settings, upstream, st.files)
            self.keys[st.name] = key
            d = self.cfg.stage_dir(st.name)
            marker = read_marker(d)
            if marker and marker.get("key") == key and st.name not in self.force:
                self.log(f"[{i}/{len(plans)}] {st.name}: up to date ({d}), skipped")
                continue
            pending = self.cfg.out / ".presel-pending" / f"{st.name}.json"
            started = _read_json(pending)
            resumes = st.resumable and marker is None and started is not None and started.get("key") == key
            if not resumes:
                # finished with other settings, a partial output of other settings, or one that cannot resume
                _clean(d, started=started is not None and started.get("stage") == st.name)
            self.log(f"[{i}/{len(plans)}] {st.name} -> {d}" + (" (resuming)" if resumes and d.exists() else ""))
            write_json(pending, {"key": key, "stage": st.name})
            t0 = time.perf_counter()
            st.run()
            dt = time.perf_counter() - t0
            d.mkdir(parents=True, exist_ok=True)
            write_json(d / MARKER, {"key": key, "stage": st.name, "settings": st.settings})
            pending.unlink()
            self.timings[st.name] = round(dt, 2)
            write_json(timings_path, self.timings)
            self.log(f"[{i}/{len(plans)}] {st.name}: done in {dt:.1f} s")
        return self.timings


def run_config(cfg: RunConfig, *, force: tuple[str, ...] = (), log: Callable[[str], None] = print) -> dict[str, float]:
    return Pipeline(cfg, log=log, force=force).run()
