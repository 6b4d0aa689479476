"""Settings of `ffitool check`: the command line over `[tool.ffitool.check]` of a pyproject.toml.

Keys are spelled like the long options (`require-function = ["add_one"]`,
`max-blob-size = "64MiB"`), as ruff does, so a setting moves between a CI script and the
project file unchanged. An option given on the command line replaces the file's value (lists
too: `--select B` is the whole selection, not an addition). Unknown keys, codes that match
no rule and sizes that do not parse are usage errors: a typo must not turn a check off.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ffitool.checks import Requirements
from ffitool.errors import InputError, UsageError
from ffitool.payloads.archs import ARCH_PATTERN
from ffitool.rules import RULES, matching

TABLE = ("tool", "ffitool", "check")

_LISTS = ("require-function", "require-kind", "allow-kind", "require-arch", "select", "ignore")
_FLAGS = ("strict", "require-ffi")
KEYS = (*_LISTS, "max-blob-size", *_FLAGS)
"""Every setting, by the name of its long option."""

_CONFIG_LIMIT = 1 << 20
"""A pyproject.toml larger than 1 MiB is not a project file."""


@dataclass(frozen=True)
class CheckSettings:
    """What to check and what fails: the result of the file and the command line."""

    requirements: Requirements
    reported: frozenset[str]
    """Codes that are reported (selected and not ignored)."""
    strict: bool
    """Warnings fail too."""
    config: Path | None
    """The file the settings came from, if any."""


def find_config(start: Path) -> tuple[Path, dict[str, object]] | None:
    """The closest pyproject.toml from `start` upwards that has a `[tool.ffitool.check]`
    table, with its parsed contents (so that it is read once)."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            document = read_toml(candidate)
            if TABLE[-1] in _table(document, TABLE[:-1]):
                return candidate, document
    return None


def read_toml(path: Path) -> dict[str, object]:
    """Parse a TOML file; a file that cannot be read is exit 3, bad TOML is a usage error."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    from ffitool.files import open_regular_file

    handle, size = open_regular_file(path)
    with handle:
        if size > _CONFIG_LIMIT:
            raise InputError(f"{path}: {size} bytes is too large for a configuration file")
        text = handle.read(_CONFIG_LIMIT)
    try:
        return tomllib.loads(text.decode("utf-8"))
    except ValueError as exc:  # bad UTF-8, bad TOML, or int() of an integer of 4300+ digits
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise UsageError(f"{path}: not valid TOML: nested too deeply") from None


def config_table(path: Path, document: Mapping[str, object]) -> dict[str, object]:
    """The `[tool.ffitool.check]` table of a parsed file, with every key and type checked."""
    table = _table(document, TABLE)
    for key, value in table.items():
        if key not in KEYS:
            raise UsageError(
                f"{path}: unknown key {key!r} in [tool.ffitool.check] (known: {', '.join(KEYS)})"
            )
        if key in _LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{path}: {key} must be a list of strings")
        elif key in _FLAGS:
            if not isinstance(value, bool):
                raise UsageError(f"{path}: {key} must be true or false")
        elif isinstance(value, bool) or not isinstance(value, str | int):
            raise UsageError(f'{path}: {key} must be a size such as "64MiB" or a byte count')
    return table


def _table(document: Mapping[str, object], keys: tuple[str, ...]) -> dict[str, object]:
    node: object = document
    for key in keys:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE_LIMIT = 1 << 63
"""No file is larger (off_t): a size past it is a typo, or an attempt on the float parse."""
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_size(text: str | int, where: str) -> int:
    """`64MiB`, `1.5G`, `100kB` or a byte count -> bytes. `K`, `M`, `G` are binary, as in
    binutils and dd; `kB`, `MB`, `GB` decimal."""
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"{where}: a size cannot be negative")
        return text
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _UNITS:
        raise UsageError(
            f"{where}: {text!r} is not a size (a byte count, or a number with B, KiB, MiB,"
            " GiB, TiB, kB, MB, GB or TB)"
        )
    size = float(match.group(1)) * _UNITS[match.group(2)]
    if size >= _SIZE_LIMIT:  # 400 digits are inf, which int() refuses with OverflowError
        raise UsageError(f"{where}: {text!r} is too large a size")
    return int(size)


def _archs(given: tuple[str, ...], where: str) -> tuple[str, ...]:
    """`require-arch` entries, each a comma list (`sm_90,sm_100a`), checked: a typo must fail
    rather than ask for an architecture no code has."""
    archs = tuple(part.strip() for value in given for part in value.split(",") if part.strip())
    for arch in archs:
        if ARCH_PATTERN.fullmatch(arch) is None:
            raise UsageError(
                f"{where}: require-arch: {arch!r} is not an architecture such as sm_90, sm_90a"
                " or sm_100f"
            )
    return tuple(dict.fromkeys(archs))


def resolve(
    given: Mapping[str, object], config: Path | None, *, search_from: Path | None = None
) -> CheckSettings:
    """Merge the command line (`given`, keyed like KEYS, None where not given) over the file.

    `config` is an explicit `--config`; without one, the closest pyproject.toml with the
    table is used, searched from `search_from` (the current directory).
    """
    found = None
    if config is not None:
        found = config, read_toml(config)
    elif search_from is not None:
        found = find_config(search_from)
    config = found[0] if found is not None else None
    table = config_table(*found) if found is not None else {}
    where = str(config) if config is not None else "command line"
    merged = {key: given.get(key) if given.get(key) is not None else table.get(key) for key in KEYS}

    def strings(key: str) -> tuple[str, ...]:
        # A list setting is a list of strings or None: config_table checked the file's, and the
        # command line parses its options as lists of strings.
        return tuple(cast("list[str] | None", merged[key]) or ())

    def codes(key: str) -> set[str]:
        try:
            return matching(strings(key))
        except ValueError as exc:
            raise UsageError(f"{where}: {key}: {str(exc)!r} matches no rule code") from None

    select = codes("select") if merged["select"] else set(RULES)
    size = cast("str | int | None", merged["max-blob-size"])  # as config_table checked it
    return CheckSettings(
        requirements=Requirements(
            functions=strings("require-function"),
            kinds=strings("require-kind"),
            allowed_kinds=strings("allow-kind") if merged["allow-kind"] is not None else None,
            max_blob_size=None if size is None else parse_size(size, where),
            require_ffi=bool(merged["require-ffi"]),
            archs=_archs(strings("require-arch"), where),
        ),
        reported=frozenset(select - codes("ignore")),
        strict=bool(merged["strict"]),
        config=config,
    )
