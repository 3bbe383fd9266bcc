"""The run loop of ``presel run``: plan (a loop over the registry), validate, then run or skip each stage."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from presel.errors import PreselError
from presel.io.atomic import write_json
from presel.pipeline.base import Context, Stage, StagePlan, Waiting
from presel.pipeline.config import RunConfig
from presel.pipeline.registry import REGISTRY
from presel.pipeline.workdir import KeyParts, StageDir, stage_key

_MISSING = object()


class Pipeline:
    def __init__(self, cfg: RunConfig, *, log: Callable[[str], None] = print, force: tuple[str, ...] = ()):
        self.cfg = cfg
        self.log = log
        self.force = set(force)
        self.keys: dict[str, str] = {}
        self.legacy: dict[str, str] = {}  # keys as presel computed them before result-neutral settings
        self.full: dict[str, str] = {}  # keys with upstream full keys (before work keys): markers of then still hold
        self.timings: dict[str, float] = {}
        self.waiting: str | None = None
        self._pool = None
        self._published: set[str] = set()  # realpaths of what the planned stages publish for later ones

    # the pool is read once per run
    def pool(self):
        if self._pool is None:
            from presel.io.manifest import read_pool

            p = self.cfg.pool
            self.cfg.check_pool()
            self._pool = read_pool(self.cfg.path(p["path"]), image_root=self.cfg.path(p.get("image_root")),
                                   task_field=p.get("task_field"), task_map=self.cfg.path(p.get("task_map")),
                                   task_rules=p.get("task_rules"), default_task=p.get("default_task"),
                                   id_field=p.get("id_field", "id"), image_field=p.get("image_column", "image"))
        return self._pool

    def stages(self) -> list[Stage]:
        """Every stage the config asks for, wired to its inputs and validated: nothing runs before this passes."""
        self.cfg.check_pool()
        self.cfg.check_estimate()
        ctx = Context(self.cfg, self.pool)
        self._published = set()
        out: list[Stage] = []
        for cls in REGISTRY:
            section = self.cfg.sections.get(cls.name)
            if section is None:
                continue
            st = cls(ctx, section)
            st.check_paths()
            planned = st.wire()
            st.validate()
            if planned:
                st.publish()
                self._published.update(os.path.realpath(v) for v in ctx.outputs.values() if v is not None)
                ctx.planned.append(st.name)
                out.append(st)
        return out

    def plan(self) -> list[StagePlan]:
        return [st.plan() for st in self.stages()]

    # ---- keys --------------------------------------------------------------------------------------
    def _pool_key(self) -> None:
        p = self.cfg.pool
        rules = p.get("task_rules")
        files = {"manifest": self.cfg.path(p["path"]), "task_map": self.cfg.path(p.get("task_map")),
                 "task_rules": self.cfg.path(rules) if isinstance(rules, str) else None}
        self.keys["pool"] = self.legacy["pool"] = self.full["pool"] = stage_key("pool", p, {}, files)

    def _parts(self, st: StagePlan) -> KeyParts:
        parts = KeyParts(st.name, st.settings, {n: self.keys[n] for n in ("pool", *st.needs) if n in self.keys},
                         st.files, reformat=st.reformat)
        self.keys[st.name] = parts.work_key  # what later stages see: an output's form does not change their inputs
        self.full[st.name] = stage_key(st.name, st.settings, {n: self.full[n] for n in ("pool", *st.needs)
                                                              if n in self.full}, st.files)
        legacy = st.legacy_settings if st.legacy_settings is not None else st.settings
        self.legacy[st.name] = stage_key(st.name, legacy, {n: self.legacy[n] for n in ("pool", *st.needs)
                                                           if n in self.legacy}, st.files)
        return parts

    def _up_to_date(self, st: StagePlan, parts: KeyParts, marker: dict[str, Any] | None) -> bool:
        if marker is None or st.name in self.force:
            return False
        if marker.get("key") in (parts.key, self.full[st.name]):
            return True
        # a marker of an older presel whose key counted result-neutral settings: still the same result
        return "version" not in marker and marker.get("key") == self.legacy[st.name]

    def _reformats(self, st: StagePlan, parts: KeyParts, marker: dict[str, Any] | None) -> bool:
        """A finished stage whose settings changed only in an output's form: it rewrites that output, no recompute."""
        return (st.resumable and marker is not None and st.name not in self.force
                and marker.get("work_key") == parts.work_key)

    def _same_pending(self, st: StagePlan, parts: KeyParts, pending: dict[str, Any] | None) -> bool:
        """A partial output of the same key (or of the same key as an older presel computed it) resumes."""
        if pending is None:
            return False
        return pending.get("key") == parts.key or ("version" not in pending and pending.get("key") == self.legacy[st.name])

    def _check_apart(self, plans: list[StagePlan]) -> None:
        """No stage folder may be, lie inside or contain an input file of the run (presel.io.guard)."""
        from presel.io.guard import check_apart

        p = self.cfg.pool
        inputs: dict[str, Any] = {"pool.path": self.cfg.path(p.get("path")), "pool.image_root": self.cfg.path(p.get("image_root")),
                                  "pool.task_map": self.cfg.path(p.get("task_map"))}
        for st in plans:  # what an upstream stage of this run publishes is not an outside input
            inputs.update({f"{st.name}.{k}": v for k, v in (st.files or {}).items()
                           if v is None or os.path.realpath(v) not in self._published})
        check_apart({f"stage folder {st.name}": self._stage_dir(st.name).path for st in plans}, inputs,
                    {"pool.image_root": "root"})

    def _stage_dir(self, name: str) -> StageDir:
        return StageDir(self.cfg.out, name, self.cfg.stage_dir(name))

    # ---- the run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        plans = self.plan()
        if not plans:
            raise PreselError(f"{self.cfg.source}: no stage to run; add stage sections (reference, embed, select, ...)")
        self._check_apart(plans)
        for st in plans:  # a folder presel did not write stops the run before anything changes
            self._stage_dir(st.name).check_owned()
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        self._pool_key()
        timings_path = self.cfg.out / "timings.json"
        try:
            self.timings = json.loads(timings_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.timings = {}
        for i, st in enumerate(plans, 1):
            if not self._run_one(st, f"[{i}/{len(plans)}]"):
                break
            write_json(timings_path, self.timings)
        return self.timings

    def _run_one(self, st: StagePlan, tag: str) -> bool:
        parts, sd = self._parts(st), self._stage_dir(st.name)
        marker = sd.marker()
        if self._up_to_date(st, parts, marker):
            if marker.get("key") != parts.key:
                sd.finish(parts)  # migrate the old marker to this presel's key
            self.log(f"{tag} {st.name}: up to date ({sd.path}), skipped")
            return True
        resumes = st.resumable and marker is None and self._same_pending(st, parts, sd.pending())
        reformats = self._reformats(st, parts, marker)
        if reformats:  # only an output's form changed: the stage rewrites it from what it has (nothing recomputed)
            self.log(f"{tag} {st.name}: same results, other output form: rewriting its outputs ({sd.path})")
        elif not resumes:  # finished with other settings, a partial output of other settings, or one that cannot resume
            sd.clear()
        self.log(f"{tag} {st.name} -> {sd.path}" + (" (resuming)" if resumes and sd.path.exists() else ""))
        sd.begin(parts)
        t0 = time.perf_counter()
        result = st.run()
        dt = time.perf_counter() - t0
        if isinstance(result, Waiting):
            self.waiting = f"{st.name}: {result.message}"
            self.log(f"{tag} {st.name}: not finished in this run: {result.message}")
            return False
        sd.finish(parts)
        self.timings[st.name] = round(dt, 2)
        self.log(f"{tag} {st.name}: done in {dt:.1f} s")
        return True

    # ---- dry run -----------------------------------------------------------------------------------
    def status(self) -> list[tuple[str, str, list[str]]]:
        """(stage, 'up to date' | 'will run' | 'will resume' | 'will rerun', reasons) for every planned stage."""
        stages = self.stages()
        self._check_apart([st.plan() for st in stages])
        self._pool_key()
        rows: list[tuple[str, str, list[str]]] = []
        reruns: set[str] = set()
        for stage in stages:
            st = stage.plan()
            parts, sd = self._parts(st), self._stage_dir(st.name)
            marker = sd.marker()
            if self._up_to_date(st, parts, marker):
                rows.append((st.name, "up to date", []))
                continue
            if self._reformats(st, parts, marker):
                why = change_reasons(stage, marker, parts, reruns)
                rows.append((st.name, "will rewrite its outputs", [*why, "same results: nothing is recomputed"]))
                continue
            reruns.add(st.name)
            if marker is None:
                resumes = st.resumable and self._same_pending(st, parts, sd.pending())
                rows.append((st.name, "will resume" if resumes else "will run", []))
            else:
                why = ["--force"] if st.name in self.force else change_reasons(stage, marker, parts, reruns)
                rows.append((st.name, "will rerun", why))
        return rows


def _fmt(v: Any) -> str:
    return "unset" if v is _MISSING else (repr(v) if isinstance(v, str) else json.dumps(v))


def change_reasons(stage: Stage, marker: dict[str, Any], parts: KeyParts, reruns: set[str]) -> list[str]:
    """Why a finished stage reruns: the settings, upstream stages and input files that changed."""
    old = {k: v for k, v in (marker.get("settings") or {}).items() if k not in stage.neutral}
    new = parts.settings
    out = [f"{stage.name}: {k} {_fmt(old.get(k, _MISSING))} -> {_fmt(new.get(k, _MISSING))}"
           for k in sorted(set(old) | set(new)) if old.get(k, _MISSING) != new.get(k, _MISSING)]
    old_up = marker.get("upstream") or {}
    rerun = [n for n in parts.upstream if n in reruns]
    if rerun:
        out.append(f"upstream stage {rerun[0]} reruns" if len(rerun) == 1 else
                   f"upstream stages {', '.join(rerun)} rerun")
    for n, key in parts.upstream.items():
        if n not in reruns and n in old_up and old_up[n] != key:
            out.append(f"upstream {'pool' if n == 'pool' else 'stage ' + n} changed")
    old_fp = marker.get("fingerprints") or {}
    for k, fp in parts.prints.items():
        if k in old_fp and old_fp[k] != fp:
            out.append(f"input file {k} changed ({parts.files[k]})")
    if not out:
        out.append("settings or inputs changed since it ran" + ("" if "version" in marker else
                                                                 " (marker of an older presel)"))
    return out


def run_config(cfg: RunConfig, *, force: tuple[str, ...] = (), log: Callable[[str], None] = print) -> dict[str, float]:
    return Pipeline(cfg, log=log, force=force).run()
