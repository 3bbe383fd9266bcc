"""The Stage abstraction of ``presel run``.

A stage declares once: its ``name`` (the YAML section), its output folder ``dir``, its ``config``
dataclass (built from the section, so its ``__post_init__`` validates it), the section keys outside
that dataclass (``extra``), the keys naming files that must exist (``paths``), the upstream stages its
key depends on (``needs``), its result-neutral settings (``neutral``: never part of the key), whether
a partial output resumes (``resumable``), and ``run()``. ``wire()`` reads what earlier stages
published in the :class:`Context` and publishes this stage's outputs for later ones.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from presel.errors import PreselError

if TYPE_CHECKING:
    from presel.pipeline.config import RunConfig


@dataclass
class Waiting:
    """What a stage returns when it cannot finish in this run (batch results still to come): the run stops there,
    unmarked, and the next run resumes it."""

    message: str


@dataclass
class StagePlan:
    name: str
    settings: dict[str, Any]
    needs: tuple[str, ...]
    files: dict[str, Path | None]
    run: Callable[[], Any]
    resumable: bool = False  # keep a partial output dir of the same key (the stage resumes)
    legacy_settings: dict[str, Any] | None = None  # the whole section, as keys before result-neutral settings


@dataclass
class Context:
    """What the stages of one run share: the config, the pool (read once) and the outputs published so far."""

    cfg: RunConfig
    pool: Callable[[], Any]
    outputs: dict[str, Path | str | None] = field(default_factory=dict)
    planned: list[str] = field(default_factory=list)


class Stage:
    name: ClassVar[str]
    dir: ClassVar[str]
    config: ClassVar[type | None] = None
    extra: ClassVar[tuple[str, ...]] = ()
    paths: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    neutral: ClassVar[frozenset[str]] = frozenset()
    resumable: ClassVar[bool] = False
    outputs: ClassVar[dict[str, str]] = {}  # what it publishes for later stages: name -> path in its dir ("" = the dir)

    def __init__(self, ctx: Context, section: dict[str, Any]):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.section = dict(section)
        self.files: dict[str, Path | None] = {}
        self.conf: Any = None

    # ---- declarations --------------------------------------------------------------------------
    @property
    def source(self) -> str:
        return f"{self.cfg.source}: {self.name}"

    @property
    def out_dir(self) -> Path:
        return self.cfg.out / self.dir

    @classmethod
    def takes(cls) -> set[str]:
        """Every key its section may hold: the config dataclass's fields and the declared ``extra`` keys."""
        if cls.config is None:
            return set(cls.extra)
        from presel.config import deprecated_names

        return {f.name for f in dataclasses.fields(cls.config)} | set(deprecated_names(cls.config)) | set(cls.extra)

    def known_keys(self) -> set[str]:
        return self.takes()

    def config_section(self) -> dict[str, Any]:
        """The part of the section that is the config dataclass's."""
        return {k: v for k, v in self.section.items() if k not in self.extra}

    def settings(self) -> dict[str, Any]:
        """The settings in the stage key: the section without its result-neutral settings (under either name of a
        setting that was renamed)."""
        from presel.config import deprecated_names

        old = deprecated_names(self.config) if self.config is not None else {}
        return {k: v for k, v in self.section.items() if k not in self.neutral and old.get(k) not in self.neutral}

    def legacy_settings(self) -> dict[str, Any]:
        return dict(self.section)

    # ---- lifecycle -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Unknown keys, missing files and the config dataclass's own checks, before any stage runs."""
        unknown = sorted(set(self.section) - self.known_keys())
        if unknown:
            known = sorted(self.known_keys())
            raise PreselError(f"{self.cfg.source}: unknown setting(s) {', '.join(unknown)} in '{self.name}'; "
                              + (f"known: {', '.join(known)}" if known else
                                 f"'{self.name}' takes no settings: write `{self.name}: {{}}`"))
        for key in self.paths:
            require_path(self.cfg, self.name, key, self.section.get(key))
        if self.config is not None:
            from presel.config import from_dict

            self.conf = from_dict(self.config, self.config_section(), source=self.source)

    def wire(self) -> bool:
        """Read upstream outputs from the context (``self.need``), set ``self.files``; False: nothing to run."""
        return True

    def publish(self) -> None:
        """This stage's ``outputs`` into the context, for the stages after it."""
        for name, rel in self.outputs.items():
            self.ctx.outputs[name] = self.out_dir / rel if rel else self.out_dir

    def run(self) -> Any:
        raise NotImplementedError

    def plan(self) -> StagePlan:
        return StagePlan(self.name, self.settings(), self.needs, dict(self.files), self.run, self.resumable,
                         self.legacy_settings())

    def model(self, key: str = "model") -> str | None:
        """A model setting: a path relative to the config's folder when one exists there, else as given (a hub id,
        an offline name such as llava-small, or a path relative to the working directory)."""
        value = self.section.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise PreselError(f"{self.cfg.source}: {self.name}.{key}={value!r} must be a model directory, hub id or "
                              "offline name (a string)")
        p = self.cfg.path(value)
        if os.path.exists(value) or not p.exists():  # as given when it works as given (what older presel did)
            if str(value).startswith(("./", "../", "/")) and not os.path.exists(value):
                raise PreselError(f"{self.cfg.source}: {self.name}.{key}={value!r}: no such model directory ({p}); "
                                  "fix the path (relative paths are relative to the config file's folder, "
                                  f"{self.cfg.base_dir})")
            return str(value)
        return str(p)

    def need(self, output: str, fix: str) -> Any:
        """An upstream output this stage cannot run without."""
        value = self.ctx.outputs.get(output)
        if value is None:
            raise PreselError(f"{self.cfg.source}: '{self.name}' {fix}")
        return value


def require_path(cfg: RunConfig, section: str, key: str, value: Any) -> Path | None:
    """A path setting that must exist (relative to the config's folder); None when unset."""
    if value in (None, ""):
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise PreselError(f"{cfg.source}: {section}.{key}={value!r} must be a path (a string)")
    p = cfg.path(value)
    try:
        there = p.exists()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte: not a path at all
        from presel.io.text import short

        raise PreselError(f"{cfg.source}: {section}.{key}={short(value)} is not a usable path "
                          f"({getattr(e, 'strerror', None) or e}); fix the path") from None
    if not there:
        raise PreselError(f"{cfg.source}: {section}.{key}={value!r}: {p} does not exist; fix the path "
                          f"(relative paths are relative to the config file's folder, {cfg.base_dir})")
    return p
