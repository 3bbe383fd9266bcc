"""Model answers -> validated LLaVA conversation turns.

Same code for online answers, batch results and oracle annotations, so every path produces
training records with the same guarantees: alternating human/gpt turns starting with human and
ending with gpt, no empty turn, exactly one ``<image>`` token and it is in the first human turn,
and (when the template asked for JSON) valid JSON that validates against the template's schema.
"""

from __future__ import annotations

import json
import re
from typing import Any

from presel.generate.templates import Template

IMAGE_TOKEN = "<image>"

_LIST_KEYS = ("conversations", "conversation", "qa", "qa_pairs", "pairs", "questions", "turns", "dialogue", "messages")
_Q_KEYS = ("question", "q", "instruction", "user", "human", "prompt")
_A_KEYS = ("answer", "a", "response", "assistant", "gpt", "output")
_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_-]*\s*\n(.*?)\n?```\s*$", re.S)
_TEXT_Q = re.compile(r"^\s*(?:\*\*)?(?:Q|Question|User|Human)\s*\d*\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.*)$", re.I)
_TEXT_A = re.compile(r"^\s*(?:\*\*)?(?:A|Answer|Assistant|GPT)\s*\d*\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*(.*)$", re.I)


class ParseError(ValueError):
    """A malformed answer (retried, then recorded as a failure)."""


def extract_json(text: str) -> Any:
    """The JSON value of an answer; tolerates a Markdown code fence and prose around one object/list."""
    s = text.strip()
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (s.find("{"), s.find("[")) if i >= 0]
    if starts:
        start = min(starts)
        end = max(s.rfind("}"), s.rfind("]"))
        if end > start:
            try:
                return json.loads(s[start:end + 1])
            except json.JSONDecodeError as e:
                raise ParseError(f"answer is not valid JSON ({e.msg} at char {e.pos})") from None
    raise ParseError("answer has no JSON object although the template asked for JSON")


def _pick(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    low = {str(k).lower(): v for k, v in d.items()}
    return next((low[k] for k in keys if k in low), None)


def pairs_from_json(obj: Any) -> list[tuple[str, str]]:
    """Question/answer pairs from the JSON shapes models produce."""
    if isinstance(obj, dict):
        items = _pick(obj, _LIST_KEYS)
        if items is None and _pick(obj, _Q_KEYS) is not None:
            items = [obj]
        if items is None:
            raise ParseError(f"JSON answer has none of the keys {', '.join(_LIST_KEYS[:4])}, ...")
        obj = items
    if not isinstance(obj, list):
        raise ParseError(f"JSON answer must hold a list of question/answer pairs, got {type(obj).__name__}")
    pairs: list[tuple[str, str]] = []
    if obj and all(isinstance(t, dict) and ("from" in t or "role" in t) for t in obj):  # a flat turn list
        turns = [(str(t.get("from", t.get("role"))).lower(), t.get("value", t.get("content"))) for t in obj]
        turns = [t for t in turns if t[0] != "system"]
        if len(turns) % 2:
            raise ParseError(f"conversation has {len(turns)} turns; it must alternate question/answer")
        for (r1, q), (r2, a) in zip(turns[::2], turns[1::2]):
            if r1 not in ("human", "user") or r2 not in ("gpt", "assistant"):
                raise ParseError("conversation turns must alternate user/assistant, starting with the user")
            pairs.append((q, a))
    else:
        for i, it in enumerate(obj):
            if not isinstance(it, dict):
                raise ParseError(f"pair {i + 1} is {type(it).__name__}, expected an object with question/answer")
            q, a = _pick(it, _Q_KEYS), _pick(it, _A_KEYS)
            if q is None or a is None:
                raise ParseError(f"pair {i + 1} lacks a question or an answer field")
            pairs.append((q, a))
    out = []
    for i, (q, a) in enumerate(pairs):
        if not isinstance(q, str):
            raise ParseError(f"pair {i + 1}: question is {type(q).__name__}, expected text")
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            a = str(a)
        if not isinstance(a, str):
            raise ParseError(f"pair {i + 1}: answer is {type(a).__name__}, expected text")
        out.append((q, a))
    return out


def pairs_from_text(text: str) -> list[tuple[str, str]]:
    """Pairs from ``Q: ... / A: ...`` (or Question/Answer, User/Assistant) lines; answers may span lines."""
    pairs: list[list[str]] = []
    cur: str | None = None
    for line in text.splitlines():
        mq, ma = _TEXT_Q.match(line), _TEXT_A.match(line)
        if mq:
            pairs.append([mq.group(1), ""])
            cur = "q"
        elif ma and pairs:
            pairs[-1][1] = ma.group(1)
            cur = "a"
        elif cur and pairs and line.strip():
            pairs[-1][0 if cur == "q" else 1] += "\n" + line.strip()
    if not pairs:
        raise ParseError("answer has neither JSON nor Q:/A: lines")
    return [(q, a) for q, a in pairs]


def validate_schema(obj: Any, schema: dict[str, Any] | None) -> None:
    if schema is None:
        return
    import jsonschema

    v = jsonschema.validators.validator_for(schema)(schema)
    err = next(iter(sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path))), None)
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise ParseError(f"answer does not match the template's json_schema at {path}: {err.message}")


def validate_conversation(turns: list[dict[str, str]], *, fix_image_token: bool = True) -> list[dict[str, str]]:
    """Check (and normalise) LLaVA turns: human/gpt alternating from human to gpt, no empty turn, one
    ``<image>`` token in the first human turn. With ``fix_image_token``, a missing token is prepended
    (``"<image>\\n" + text``) and stray tokens in later turns are removed; otherwise they are errors."""
    conv = [dict(t) for t in turns if t.get("from") != "system"]
    system = [dict(t) for t in turns if t.get("from") == "system"]
    if not conv:
        raise ParseError("no conversation turns")
    if len(conv) % 2:
        raise ParseError(f"{len(conv)} turns; a conversation alternates human/gpt and ends with gpt")
    for i, t in enumerate(conv):
        want = "human" if i % 2 == 0 else "gpt"
        if t.get("from") != want:
            raise ParseError(f"turn {i + 1} is from {t.get('from')!r}, expected {want!r}")
        if not isinstance(t.get("value"), str):
            raise ParseError(f"turn {i + 1} has no text value")
    for i, t in enumerate(conv):
        n = t["value"].count(IMAGE_TOKEN)
        if i == 0:
            if n == 0:
                if not fix_image_token:
                    raise ParseError("first human turn has no <image> token")
                t["value"] = f"{IMAGE_TOKEN}\n{t['value'].strip()}"
            elif n > 1:
                if not fix_image_token:
                    raise ParseError(f"first human turn has {n} <image> tokens, expected 1")
                first = t["value"].index(IMAGE_TOKEN) + len(IMAGE_TOKEN)
                t["value"] = t["value"][:first] + t["value"][first:].replace(IMAGE_TOKEN, "")
        elif n:
            if not fix_image_token:
                raise ParseError(f"turn {i + 1} has an <image> token; only the first human turn may")
            t["value"] = t["value"].replace(IMAGE_TOKEN, "").strip()
        if not t["value"].replace(IMAGE_TOKEN, "").strip():
            raise ParseError(f"turn {i + 1} ({t['from']}) is empty")
    return system + conv


def build_conversation(template: Template, text: str, *, item_id: str, seed: int = 0) -> list[dict[str, str]]:
    """Parse a model answer with ``template``'s kind into validated LLaVA turns (``from``/``value``)."""
    if text is None or not str(text).strip():
        raise ParseError("empty answer")
    text = str(text)
    if template.kind == "description":
        answer = text.strip()
        m = _FENCE.match(answer)
        if m:
            answer = m.group(1).strip()
        turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{template.instruction_for(item_id, seed)}"},
                 {"from": "gpt", "value": answer}]
        return validate_conversation(turns)
    if template.kind == "json":
        obj = extract_json(text)
        if not isinstance(obj, (dict, list)):
            raise ParseError(f"JSON answer must be an object or a list, got {type(obj).__name__}")
        validate_schema(obj, template.json_schema)
        turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{template.instruction_for(item_id, seed)}"},
                 {"from": "gpt", "value": json.dumps(obj, ensure_ascii=False)}]
        return validate_conversation(turns)
    # qa / conversation
    try:
        obj = extract_json(text)
    except ParseError:
        if template.json_schema is not None:
            raise
        pairs = pairs_from_text(text)
    else:
        validate_schema(obj, template.json_schema)
        pairs = pairs_from_json(obj)
    pairs = [(q.strip(), a.strip()) for q, a in pairs]
    for i, (q, a) in enumerate(pairs):
        if not q.replace(IMAGE_TOKEN, "").strip() or not a.strip():
            raise ParseError(f"pair {i + 1} has an empty question or answer")
    if len(pairs) < template.min_pairs:
        raise ParseError(f"{len(pairs)} question/answer pair(s); template '{template.name}' needs at least {template.min_pairs}")
    pairs = pairs[:template.max_pairs]
    turns = []
    for q, a in pairs:
        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return validate_conversation(turns)


# ---------------------------------------------------------------------------------------------- result lines
_RESULT_TYPES: dict[str, tuple[tuple[str, tuple[type, ...]], ...]] = {
    # field -> the JSON types it may have (None = null) in each provider's batch result line
    "openai": (("custom_id", (str,)), ("id", (str, type(None))), ("response", (dict, type(None))),
               ("error", (dict, str, type(None)))),
    "anthropic": (("custom_id", (str,)), ("result", (dict,))),
    "gemini": (("key", (str,)), ("response", (dict, type(None))), ("error", (dict, str, type(None))),
               ("status", (dict, str, type(None)))),
}
_JSON_NAMES = {str: "a string", dict: "an object", type(None): "null", list: "a list", int: "a number",
               float: "a number", bool: "true/false"}


def result_line_problem(obj: dict[str, Any], shape: str) -> str | None:
    """What is wrong with the field types of a batch result line of ``shape`` (None: nothing)."""
    for name, types in _RESULT_TYPES.get(shape, ()):
        if name in obj and not isinstance(obj[name], types) or (isinstance(obj.get(name), bool) and bool not in types):
            want = " or ".join(dict.fromkeys(_JSON_NAMES[t] for t in types))
            from presel.io.text import short

            return f"'{name}' must be {want}, got {_JSON_NAMES.get(type(obj[name]), type(obj[name]).__name__)} " \
                   f"{short(obj[name], 80)}"
    return None
