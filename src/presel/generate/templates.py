"""Per-task prompt templates (YAML).

A templates file looks like the shipped ``default_templates.yaml``::

    default: vqa                 # template for tasks no other template matches (noted in summary.json)
    templates:
      vqa:
        match: [vqa, gqa]        # substrings of task names this template serves (longest match wins)
        kind: qa                 # qa | conversation | description | json
        system: ...
        user: ...
        min_pairs: 1
        max_pairs: 5
        max_tokens: 512
        temperature: 0.2
        instructions: [...]      # human turn(s) for description/json kinds (one picked per image, seeded)
        json_schema: {...}       # answers must validate; sent as response_format json_schema

User templates (``--templates``) are tried before the defaults: a user template named like a task,
or matching it, wins over the shipped ones; a user template named like a shipped one (``vqa``, ...)
changes only the fields it gives; ``default`` in the user file replaces the shipped default.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from presel.errors import PreselError

KINDS = ("qa", "conversation", "description", "json")
_KEYS = {"match", "kind", "system", "user", "instructions", "min_pairs", "max_pairs", "max_tokens",
         "temperature", "json_schema"}


@dataclass(frozen=True)
class Template:
    name: str
    kind: str = "qa"
    system: str = ""
    user: str = ""
    instructions: tuple[str, ...] = ()
    match: tuple[str, ...] = ()
    min_pairs: int = 1
    max_pairs: int = 8
    max_tokens: int = 512
    temperature: float = 0.2
    json_schema: dict[str, Any] | None = None
    source: str = "defaults"

    def __post_init__(self) -> None:
        where = f"{self.source}: template '{self.name}'"
        if self.kind not in KINDS:
            raise PreselError(f"{where}: kind={self.kind!r} must be one of {', '.join(KINDS)}")
        if not self.user.strip():
            raise PreselError(f"{where}: 'user' (the prompt sent with the image) is empty; write one")
        if self.kind in ("description", "json") and not self.instructions:
            raise PreselError(f"{where}: kind {self.kind} needs 'instructions' (the human turn of the "
                              "training conversation), e.g. [\"Describe the image in detail.\"]")
        if not 1 <= self.min_pairs <= self.max_pairs:
            raise PreselError(f"{where}: min_pairs={self.min_pairs}, max_pairs={self.max_pairs} must satisfy "
                              "1 <= min_pairs <= max_pairs")
        if self.max_tokens < 1:
            raise PreselError(f"{where}: max_tokens={self.max_tokens} must be >= 1")
        if not 0 <= self.temperature <= 2:
            raise PreselError(f"{where}: temperature={self.temperature} must be in [0, 2]")
        if self.json_schema is not None:
            if not isinstance(self.json_schema, dict):
                raise PreselError(f"{where}: json_schema must be a mapping (a JSON schema object)")
            try:
                import jsonschema

                jsonschema.validators.validator_for(self.json_schema).check_schema(self.json_schema)
            except ImportError:  # pragma: no cover - jsonschema is in the generate extra
                pass
            except Exception as e:  # jsonschema.SchemaError
                raise PreselError(f"{where}: json_schema is not a valid JSON schema ({getattr(e, 'message', e)})") from None

    @property
    def answers_json(self) -> bool:
        """Whether the model is asked for JSON (all kinds but description)."""
        return self.kind != "description"

    def render(self, text: str, task: str) -> str:
        return text.replace("{task}", task)

    def instruction_for(self, item_id: str, seed: int = 0) -> str:
        """The human turn for description/json kinds: one of ``instructions``, picked from the id and seed."""
        h = int(hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()[:8], 16)
        return self.instructions[h % len(self.instructions)]

    def fingerprint(self) -> str:
        d = {k: getattr(self, k) for k in ("kind", "system", "user", "instructions", "min_pairs", "max_pairs",
                                           "max_tokens", "temperature", "json_schema")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass
class TemplateSet:
    templates: list[Template]  # user templates first, then the shipped ones
    default: str
    notes: dict[str, str] = field(default_factory=dict)  # task -> note, for tasks served by the default

    def by_name(self, name: str) -> Template | None:
        return next((t for t in self.templates if t.name == name), None)

    def for_task(self, task: str) -> Template:
        """The template of ``task``: same name, else longest ``match`` substring, else the default (noted)."""
        t = self.by_name(task)
        if t is not None:
            return t
        low = task.lower()
        best, best_len = None, 0
        for tpl in self.templates:
            for m in tpl.match:
                if m and m.lower() in low and len(m) > best_len:
                    best, best_len = tpl, len(m)
        if best is not None:
            return best
        d = self.by_name(self.default)
        assert d is not None
        self.notes[task] = (f"task '{task}' has no template; used the default '{d.name}' (kind {d.kind}); "
                            f"add a template named '{task}' to --templates to control its prompts")
        return d


def _parse(data: Any, source: str, base: dict[str, Any] | None = None) -> tuple[list[Template], str | None]:
    if not isinstance(data, dict):
        raise PreselError(f"{source}: a templates file must be a mapping with 'templates' (and optional 'default')")
    unknown = sorted(set(data) - {"templates", "default"})
    if unknown:
        raise PreselError(f"{source}: unknown key(s) {', '.join(unknown)}; a templates file has 'templates' and 'default'")
    tpls = data.get("templates") or {}
    if not isinstance(tpls, dict):
        raise PreselError(f"{source}: 'templates' must be a mapping name -> template")
    out = []
    for name, spec in tpls.items():
        if not isinstance(spec, dict):
            raise PreselError(f"{source}: template '{name}' must be a mapping of fields")
        bad = sorted(set(spec) - _KEYS)
        if bad:
            raise PreselError(f"{source}: template '{name}': unknown field(s) {', '.join(bad)}; known: {', '.join(sorted(_KEYS))}")
        kw = {**((base or {}).get(name) or {}), **spec}  # a shipped template's name: change only what is given
        for key in ("instructions", "match"):
            v = kw.get(key)
            if isinstance(v, str):
                kw[key] = (v,)
            elif v is not None:
                kw[key] = tuple(str(x) for x in v)
        for key in ("system", "user"):
            if key in kw and not isinstance(kw[key], str):
                raise PreselError(f"{source}: template '{name}': '{key}' must be text")
        try:
            out.append(Template(name=str(name), source=source, **kw))
        except TypeError as e:
            raise PreselError(f"{source}: template '{name}': {e}") from None
    default = data.get("default")
    return out, (str(default) if default is not None else None)


def _load_yaml_text(text: str, source: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise PreselError(f"{source}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None


def default_templates_text() -> str:
    return resources.files("presel.generate").joinpath("default_templates.yaml").read_text(encoding="utf-8")


def load_templates(path: str | Path | None = None) -> TemplateSet:
    """The shipped templates, with the templates of ``path`` (YAML) tried first."""
    shipped_data = _load_yaml_text(default_templates_text(), "default_templates.yaml")
    shipped, default = _parse(shipped_data, "default_templates.yaml")
    user: list[Template] = []
    if path is not None:
        from presel.io.yamlfile import read_yaml

        p = Path(path)
        if not p.exists():
            raise PreselError(f"{p}: templates file not found; check --templates")
        user, user_default = _parse(read_yaml(p, what="templates file", mapping=False) or {}, str(p),
                                    shipped_data.get("templates"))
        default = user_default or default
    names = [t.name for t in user]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PreselError(f"{path}: template name(s) {', '.join(dup)} defined twice")
    user_names = set(names)
    allt = user + [t for t in shipped if t.name not in user_names]
    ts = TemplateSet(allt, default or "vqa")
    if ts.by_name(ts.default) is None:
        raise PreselError(f"{path or 'default_templates.yaml'}: default template '{ts.default}' is not defined; "
                          f"known: {', '.join(t.name for t in allt)}")
    return ts
