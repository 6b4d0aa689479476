"""Findings: facts about an input worth a user's attention, with a stable code.

A finding is not an exception: a malformed blob inside a readable library is reported, and the
command that found it still succeeds. Codes are stable so that CI rules can refer to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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


def printable(text: str) -> str:
    """Text safe for a one-line message: control characters and stray surrogates escaped."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
