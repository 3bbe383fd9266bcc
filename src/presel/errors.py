"""One error type for bad input: the CLI prints its message and exits with code 2."""

from __future__ import annotations


class PreselError(Exception):
    """Bad input or configuration.

    The message must name the file, line or id at fault and say how to fix it, e.g.
    ``pool.jsonl line 7: duplicate id 'a1' (first seen on line 3); make ids unique or pass --id-field @index``.
    """

    exit_code = 2


def where(path: object, line: int | None = None) -> str:
    """Format a location for error messages: ``path`` or ``path line N``."""
    return f"{path} line {line}" if line is not None else f"{path}"


class NothingUsable(PreselError):
    """A command finished but produced nothing usable (every request failed, every result line is an error):
    exit code 3, so that scripts never mistake it for success."""

    exit_code = 3
