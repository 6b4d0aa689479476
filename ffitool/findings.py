"""Findings: facts about an input worth a user's attention, with a stable code.

A finding is not an exception: a malformed blob inside a readable library is reported, and the
command that found it still succeeds. Codes are stable so that CI rules can refer to them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Severity(str, Enum):
    """How bad a finding is: `error` means the runtime would fail or misbehave."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One observation. `offset` is a byte offset into the blob when the finding is about one."""

    code: str
    severity: Severity
    message: str
    offset: int | None = None

    def to_json(self) -> dict[str, object]:
        """The finding as the JSON object the inspect schema describes."""
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "offset": self.offset,
        }


TEXT_LIMIT = 8192
"""Characters of one message or line made from an input, escapes included; what is left
out is counted in a marker. Longer than any path the kernel opens (PATH_MAX is 4096), so
an error still ends with its reason."""
LIST_ITEMS = 16
"""Items of a list quoted in a message (`listed`); the JSON data holds all of them."""


def printable(text: str, limit: int = TEXT_LIMIT) -> str:
    """Text safe for a one-line message: control characters and stray surrogates escaped,
    and at most `limit` characters, then `... (K more characters)`.

    A byte that is not UTF-8 (a surrogate from `surrogateescape`) reads `\\xff`, as in
    Python's `backslashreplace`; other non-printable characters read as `unicode_escape`
    spells them (`\\x1b`, `\\u202e`). Only the first `limit` characters are looked at, so
    a megabyte name costs what its shown part costs.
    """
    if len(text) <= limit and text.isprintable():
        return text
    pieces: list[str] = []
    used = 0
    for position, character in enumerate(text):
        piece = character if character.isprintable() else _escaped(character)
        used += len(piece)
        if used > limit:
            return "".join(pieces) + f"... ({len(text) - position} more characters)"
        pieces.append(piece)
    return "".join(pieces)


def unsurrogated(text: str) -> str:
    """`text` with each lone surrogate escaped as `printable` does, everything else kept:
    what can be encoded as UTF-8 where the exact text matters (JSON values)."""
    return _SURROGATE.sub(lambda found: _escaped(found.group()), text)


def listed(items: Sequence[object], limit: int = LIST_ITEMS) -> str:
    """`[1, 2, 3]`, or the first `limit` items and `... (K more)`: a list quoted in a message."""
    if len(items) <= limit:
        return str(list(items))
    shown = ", ".join(str(item) for item in items[:limit])
    return f"[{shown}, ... ({len(items) - limit} more)]"


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_BYTE_SURROGATES = range(0xDC80, 0xDD00)
"""Where `surrogateescape` puts the bytes 0x80-0xff that are not UTF-8."""


def _escaped(character: str) -> str:
    code = ord(character)
    if code in _BYTE_SURROGATES:
        return f"\\x{code - 0xDC00:02x}"
    return character.encode("unicode_escape").decode("ascii")


def with_exact_bytes(row: dict[str, Any], field: str) -> dict[str, Any]:
    """`row` with `<field>_hex` after `field`, the exact bytes of its text, when they are not
    UTF-8; otherwise `row` itself (the callers skip the call for ASCII, the common case).

    Readers keep such bytes as surrogates (surrogateescape); the JSON value shows them
    escaped (`\\xff`), which cannot be told from a name that spells a backslash, so the
    bytes themselves travel in hex next to it. Only then: a valid name has no such field.
    """
    text = row[field]
    try:
        text.encode("utf-8")
        return row
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte: not read from a file
        return row
    result: dict[str, Any] = {}
    for key, value in row.items():
        result[key] = value
        if key == field:
            result[f"{field}_hex"] = raw.hex()
    return result
