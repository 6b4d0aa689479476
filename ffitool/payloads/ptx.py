"""PTX text: its `.version`, `.target`, `.address_size` and the kernels it defines.

PTX is what `nvcc -ptx` writes and what the driver compiles on load (`cuModuleLoadData`), so the
ISA version and target say which drivers and GPUs can run it, and the `.entry` names are the
kernels a launcher looks up. The text can be hundreds of megabytes: it is scanned once, left to
right, through the read-only buffer (never copied or decoded whole), skipping comments and
strings so that a directive quoted in either is not taken for one; the names kept are capped.

The PTX ISA requires `.version` as the first directive and `.target` after it; text that does
not start with `.version`, or holds a control byte or bytes that are not UTF-8, is refused with
the offset. A missing `.target` is shown (an empty `target`), not refused.
A NUL padding the end (as a fatbin stores PTX) is not part of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ffitool.payloads import JsonValue, PayloadError

__all__ = ["NAMES_KEPT", "PtxDetails", "decode_ptx"]

NAMES_KEPT = 1000
"""Entry and function names kept per payload; the counts are exact."""
NAME_LIMIT = 4096
"""Characters kept of one name (a mangled template name can be long; the text, not much more)."""
SUMMARY_NAMES = 3
"""Entry names the one-line summary shows."""

# Bytes that no PTX text holds (C0 controls other than tab, newlines, VT and FF; DEL), and
# runs of non-ASCII bytes, which must be UTF-8: one pass finds both.
# (A single character set: an alternation of the two would be searched at every byte, 5x slower.)
_SUSPECT = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f-\xff]")
_NON_ASCII = re.compile(rb"[\x80-\xff]+")
# What the scanner stops at: a comment or string (skipped), or a directive it reads. Whether a
# directive follows a name (`x.entry`, not one) is tested in Python: a lookbehind here would
# make the regex engine try every byte of the text rather than only `/`, `"` and `.`, 4x slower.
_TOKEN = re.compile(rb'//|/\*|"|\.(version|target|address_size|entry|func)(?![\w$])')
_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$%.")
_VERSION = re.compile(rb"[ \t]+(\d{1,4})\.(\d{1,4})")
_TARGETS = re.compile(rb"[ \t]+(\w{1,64}(?:[ \t]*,[ \t]*\w{1,64}){0,15})")
_ADDRESS_SIZE = re.compile(rb"[ \t]+(\d{1,3})")
# After `.entry` / `.func`: an optional return parameter list (`.func (.param .b32 r) f(`),
# then the name (PTX identifiers: a letter, or one of _ $ % followed by more).
_NAME = re.compile(rb"\s*(?:\([^()]{0,4096}\)\s*)?([A-Za-z_$%][\w$%]*)")
_LINKAGE = re.compile(rb"\.(visible|extern|weak|common)\s+$")
_LOOKBEHIND = 64
"""Bytes before `.entry`/`.func` searched for its linkage directive (`.visible`, `.extern`)."""


@dataclass(frozen=True)
class PtxDetails:
    """One PTX text: ISA version, targets, address size, and the kernels and functions it
    defines (`.extern` declarations are not definitions and are not counted)."""

    version: str
    target: tuple[str, ...]
    """Every `.target` item: the architecture (`sm_90a`) and modifiers (`debug`,
    `texmode_independent`), in order; empty when the text has no `.target`, which ptxas and
    the driver refuse (read anyway: a stub with only `.version` is still recognisably PTX)."""
    address_size: int | None
    """`.address_size` (32 or 64); None when absent (the ISA then means 32)."""
    entries: tuple[str, ...]
    """`.entry` names (kernels), the first NAMES_KEPT."""
    entry_count: int
    functions: tuple[str, ...]
    """`.visible .func` names: device functions other modules may link against."""
    function_count: int
    decoder: str = "ptx"

    def summary(self) -> str:
        arch = ", ".join(self.target) or "no target"
        bits = f", {self.address_size}-bit" if self.address_size is not None else ""
        shown = ", ".join(self.entries[:SUMMARY_NAMES])
        more = self.entry_count - min(len(self.entries), SUMMARY_NAMES)
        names = f": {shown}" + (f" (+{more})" if more else "") if shown else ""
        noun = "entry" if self.entry_count == 1 else "entries"
        return f"PTX {self.version} {arch}{bits}, {self.entry_count} {noun}{names}"

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "decoder": self.decoder,
            "version": self.version,
            "target": list(self.target),
            "address_size": self.address_size,
            "entries": list(self.entries),
            "entry_count": self.entry_count,
            "functions": list(self.functions),
            "function_count": self.function_count,
        }


def decode_ptx(data: memoryview) -> PtxDetails:
    """Read one PTX text; PayloadError when it is not PTX (binary, not UTF-8, no `.version`)."""
    end = len(data)
    while end and data[end - 1] == 0:
        end -= 1
    text = data[:end]
    _check_text(text)
    scan = _Scan(text)
    scan.run()
    if scan.version is None:
        raise PayloadError("no .version directive: not PTX", 0)
    return PtxDetails(
        scan.version,
        scan.target or (),
        scan.address_size,
        tuple(scan.entries),
        scan.entry_count,
        tuple(scan.functions),
        scan.function_count,
    )


def _check_text(text: memoryview) -> None:
    """Refuse binary bytes and bytes that are not UTF-8; each non-ASCII run is checked alone,
    so the text is never decoded whole."""
    position = 0
    while (found := _SUSPECT.search(text, position)) is not None:
        start = found.start()
        if text[start] < 0x80:
            raise PayloadError(f"byte {text[start]:#04x} in PTX text", start)
        run = _NON_ASCII.match(text, start)
        assert run is not None  # text[start] is non-ASCII
        try:
            run.group().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("bytes that are not UTF-8 in PTX text", start + exc.start) from None
        position = run.end()


class _Scan:
    """One left-to-right pass over the text: directives in order, comments and strings skipped."""

    def __init__(self, text: memoryview) -> None:
        self.text = text
        self.version: str | None = None
        self.target: tuple[str, ...] | None = None
        self.address_size: int | None = None
        self.entries: list[str] = []
        self.entry_count = 0
        self.functions: list[str] = []
        self.function_count = 0

    def run(self) -> None:
        text, position = self.text, 0
        while (token := _TOKEN.search(text, position)) is not None:
            position = token.end()
            lexeme = token.group()
            if lexeme == b"//":
                position = _after(text, _LINE_END, position)
            elif lexeme == b"/*":
                position = _after(text, _COMMENT_END, position)
            elif lexeme == b'"':
                position = _string_end(text, position)
            elif token.start() == 0 or text[token.start() - 1] not in _NAME_BYTES:
                position = self._directive(token.group(1), token.start(), position)

    def _directive(self, name: bytes, start: int, position: int) -> int:
        if self.version is None:
            if name != b"version":
                raise PayloadError(f".{name.decode()} before .version: not PTX", start)
            return self._read_version(position)
        if name == b"target" and self.target is None:
            found = _TARGETS.match(self.text, position)
            if found is None:
                raise PayloadError(".target without an architecture", position)
            self.target = tuple(t.strip().decode() for t in found.group(1).split(b","))
            return found.end()
        if name == b"address_size" and self.address_size is None:
            found = _ADDRESS_SIZE.match(self.text, position)
            if found is None:
                raise PayloadError(".address_size without a size", position)
            self.address_size = int(found.group(1))
            return found.end()
        if name in (b"entry", b"func"):
            return self._definition(name == b"entry", start, position)
        return position

    def _read_version(self, position: int) -> int:
        found = _VERSION.match(self.text, position)
        if found is None:
            raise PayloadError(".version without a major.minor number", position)
        self.version = f"{int(found.group(1))}.{int(found.group(2))}"
        return found.end()

    def _definition(self, entry: bool, start: int, position: int) -> int:
        found = _NAME.match(self.text, position)
        if found is None:
            return position
        linkage = _LINKAGE.search(self.text, max(0, start - _LOOKBEHIND), start)
        kind = linkage.group(1) if linkage is not None else None
        if kind == b"extern":
            return found.end()
        name = bytes(found.group(1)[:NAME_LIMIT]).decode()
        if entry:
            self.entry_count += 1
            if len(self.entries) < NAMES_KEPT:
                self.entries.append(name)
        elif kind == b"visible":
            self.function_count += 1
            if len(self.functions) < NAMES_KEPT:
                self.functions.append(name)
        return found.end()


def _after(text: memoryview, closing: re.Pattern[bytes], position: int) -> int:
    """The position after `closing` from `position`, or the end: an unclosed block comment
    runs to the end of the text."""
    found = closing.search(text, position)
    return len(text) if found is None else found.end()


def _string_end(text: memoryview, position: int) -> int:
    """After a string's closing quote; a string does not span lines."""
    found = _STRING_END.match(text, position)
    return len(text) if found is None else found.end()


_LINE_END = re.compile(rb"\n")
_COMMENT_END = re.compile(rb"\*/")
_STRING_END = re.compile(rb'(?:\\.|[^"\\\n])*["\n]')
