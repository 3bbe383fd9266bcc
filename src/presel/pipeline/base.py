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
    reformat: frozenset[str] = frozenset()  # settings that change only an output's form (kept out of the work key)


@dataclass
class Sizes:
    """What ``--dry-run`` knows before anything runs: the pool's sizes, the reference set and the budget, and the
    throughputs to turn work into hours (measured ones from the config, else ``presel.assumed.ASSUMED``)."""

    records: int
    images: int
    tasks: list[str]
    reference: int
    budget: int
    new: int
    unit: str
    throughputs: dict[str, float]

    def hours(self, n: float, key: str) -> float:
        return n / self.throughputs[key] / 3600.0


@dataclass
class Estimate:
    """One stage's row of ``--dry-run``: what it will do, its GPU-hours and its cost in dollars."""

    what: str
    hours: float = 0.0
    cost: float = 0.0


@dataclass
class Context:
    """What the stages of one run share: the config, the pool (read once) and the outputs published so far."""

    cfg: RunConfig
    pool: Callable[[], Any]
    outputs: dict[str, Path | str | None] = field(default_factory=dict)
    planned: list[str] = field(default_factory=list)


class Stage:
    """One stage of ``presel run``. Its declarations are checked when the subclass is defined
    (:meth:`__init_subclass__`); ``neutral`` and ``reformat`` are derived from the config dataclasses' field
    metadata (:func:`presel.config.neutral`, :func:`presel.config.output_format`), never declared here."""

    name: ClassVar[str]
    dir: ClassVar[str]  # its folder in the run directory: presel.layout.STAGE_DIRS[name]
    config: ClassVar[type | None] = None
    also: ClassVar[tuple[type, ...]] = ()  # more config dataclasses whose fields the section holds
    extra: ClassVar[tuple[str, ...]] = ()
    extra_neutral: ClassVar[tuple[str, ...]] = ()  # the result-neutral ones among the ``extra`` keys
    paths: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    neutral: ClassVar[frozenset[str]] = frozenset()  # derived: settings that never enter the key
    reformat: ClassVar[frozenset[str]] = frozenset()  # derived: settings that change only an output's form
    resumable: ClassVar[bool] = False
    outputs: ClassVar[dict[str, str]] = {}  # what it publishes for later stages: name -> path in its dir ("" = the dir)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        from presel.config import FORMAT, NEUTRAL, fields_with

        if "name" in cls.__dict__ and "dir" not in cls.__dict__:
            from presel.layout import STAGE_DIRS

            if cls.name not in STAGE_DIRS:
                raise TypeError(f"stage {cls.name!r} has no folder: add it to presel.layout.STAGE_DIRS")
            cls.dir = STAGE_DIRS[cls.name]
        for attr in ("neutral", "reformat"):
            if attr in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{attr} is derived from the config dataclass: declare the setting with "
                                "presel.config.neutral(...) / output_format(...) in its field instead")
        for c in (cls.config, *cls.also):
            if c is not None and not dataclasses.is_dataclass(c):
                raise TypeError(f"{cls.__name__}: config {c!r} is not a dataclass")
        bad = [k for k in (*cls.extra_neutral, *cls.paths) if k not in cls.takes()]
        if bad:
            raise TypeError(f"{cls.__name__} declares {', '.join(bad)} (extra_neutral/paths), which its section "
                            "does not take")
        if isinstance(cls.needs, str) or not all(isinstance(n, str) for n in cls.needs):
            raise TypeError(f"{cls.__name__}.needs must be a tuple of stage names")
        from presel.layout import STAGE_DIRS

        unknown = [n for n in cls.needs if n not in STAGE_DIRS]
        if unknown:
            raise TypeError(f"{cls.__name__}.needs names {', '.join(unknown)}, which are no stages (presel.layout)")
        configs = [c for c in (cls.config, *cls.also) if c is not None]
        cls.neutral = frozenset(cls.extra_neutral).union(*(fields_with(c, NEUTRAL) for c in configs))
        cls.reformat = frozenset().union(*(fields_with(c, FORMAT) for c in configs))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _DECLARED:
            raise AttributeError(f"{type(self).__name__}.{name} is a class declaration; it cannot change on a stage")
        super().__setattr__(name, value)

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
        """Every key its section may hold: the config dataclasses' fields and the declared ``extra`` keys."""
        out = set(cls.extra)
        for c in (cls.config, *cls.also):
            if c is not None:
                out |= config_keys(c)
        return out

    @classmethod
    def accepts(cls, section: dict[str, Any]) -> set[str]:
        """The keys this section may hold (a stage whose mode changes its keys narrows ``takes()`` here)."""
        return cls.takes()

    def known_keys(self) -> set[str]:
        return self.accepts(self.section)

    def config_section(self, cls: type | None = None) -> dict[str, Any]:
        """The part of the section that is the config dataclass ``cls``'s (default: ``config``'s)."""
        keys = config_keys(cls or self.config) if (cls or self.config) is not None else set()
        return {k: v for k, v in self.section.items() if k in keys}

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
        self.check_paths()
        self.conf = self.build_config()

    def check_paths(self) -> None:
        """Every ``paths`` key names an existing file (the runner checks them before ``wire`` reads them)."""
        for key in self.paths:
            require_path(self.cfg, self.name, key, self.section.get(key))

    def build_config(self) -> Any:
        """The config dataclass from the section (its ``__post_init__`` checks), or None for plain keys."""
        if self.config is None:
            return None
        from presel.config import from_dict

        return from_dict(self.config, self.config_section(), source=self.source)

    def upstream(self) -> tuple[str, ...]:
        """The stages whose keys enter this one's: ``needs``."""
        return self.needs

    def wire(self) -> bool:
        """Read upstream outputs from the context (``self.need``), set ``self.files``; False: nothing to run."""
        return True

    def publish(self) -> None:
        """This stage's ``outputs`` into the context, for the stages after it."""
        for name, rel in self.outputs.items():
            self.ctx.outputs[name] = self.out_dir / rel if rel else self.out_dir

    def run(self) -> Any:
        raise NotImplementedError

    def estimate(self, sizes: Sizes) -> Estimate | None:
        """Its ``--dry-run`` row (None: no estimate for this stage)."""
        return None

    def plan(self) -> StagePlan:
        return StagePlan(self.name, self.settings(), self.upstream(), dict(self.files), self.run, self.resumable,
                         self.legacy_settings(), self.reformat)

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


_DECLARED = frozenset({"name", "dir", "config", "also", "extra", "extra_neutral", "paths", "needs", "neutral", "reformat",
                       "resumable", "outputs"})


def config_keys(cls: type) -> set[str]:
    """The keys a config dataclass takes in a section: its fields and its deprecated old names."""
    from presel.config import deprecated_names

    return {f.name for f in dataclasses.fields(cls)} | set(deprecated_names(cls))  # type: ignore[arg-type]


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
