"""Naming rules of the TVM FFI ABI: which symbol names matter and what role each plays.

Pure string logic shared by every object format. Special symbols carry an extra underscore
(`__tvm_ffi__x`); only the exact special prefixes below are special, any other `__tvm_ffi_`
name is a function, even one whose own name starts with `_`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

FFI_PREFIX = "__tvm_ffi_"
LIBRARY_BIN = "__tvm_ffi__library_bin"
LIBRARY_CTX = "__tvm_ffi__library_ctx"
METADATA_PREFIX = "__tvm_ffi__metadata_"
DOC_PREFIX = "__tvm_ffi__doc_"
CUBIN_PREFIX = "__tvm_ffi__cubin_"
CUBIN_END_SUFFIX = "_end"
LEGACY_BIN = "__tvm_dev_mblob"
LEGACY_CTX = "__tvm_module_ctx"


class Role(str, Enum):
    """What a symbol is for, as the runtime and TVM's codegen use it."""

    FUNCTION = "function"
    METADATA = "metadata"
    DOC = "doc"
    LIBRARY_CTX = "library_ctx"
    LIBRARY_BIN = "library_bin"
    CUBIN = "cubin"
    CUBIN_END = "cubin_end"
    LEGACY_BIN = "legacy_bin"
    LEGACY_CTX = "legacy_ctx"


@dataclass(frozen=True, slots=True)
class Naming:
    """The role of one symbol name, the FFI name it refers to, and its system-lib prefix."""

    role: Role
    name: str
    prefix: str = ""


def classify(names: Iterable[str]) -> dict[str, Naming]:
    """Classify every FFI-related name; names that are not part of the ABI are left out.

    Works on the whole set at once because two facts depend on other names: a system-lib
    prefix is known from `<prefix>__tvm_ffi__library_bin` (or `_ctx`), and
    `__tvm_ffi__cubin_X_end` ends cubin X only if `__tvm_ffi__cubin_X` exists.
    """
    unique = set(names)
    prefixes = _Prefixes(
        name[: -len(special)]
        for name in unique
        for special in (LIBRARY_BIN, LIBRARY_CTX)
        if name.endswith(special) and len(name) > len(special)
    )
    result: dict[str, Naming] = {}
    for name in unique:
        naming = _classify_one(name, unique, prefixes)
        if naming is not None:
            result[name] = naming
    return result


# A character trie: each character leads to the node of the prefixes that go on with it.
_Trie = dict[str, "_Trie"]


class _Prefixes:
    """System-lib prefixes in a character trie: the longest one a name starts with is found
    in as many steps as it has characters, however many prefixes there are (3,000 prefixes
    and 100k functions are not 300M comparisons)."""

    def __init__(self, prefixes: Iterable[str]) -> None:
        self._root: _Trie = {}
        for prefix in prefixes:
            node = self._root
            for character in prefix:
                node = node.setdefault(character, {})
            node[""] = {}  # a prefix ends here

    def __bool__(self) -> bool:
        return bool(self._root)

    def longest(self, rest: str) -> int:
        """The length of the longest prefix that `rest` starts with and is longer than; 0
        when there is none (no prefix is empty)."""
        node, found = self._root, 0
        for length, character in enumerate(rest):
            if "" in node:
                found = length
            following = node.get(character)
            if following is None:
                break
            node = following
        return found


_FIXED = {
    LIBRARY_BIN: Role.LIBRARY_BIN,
    LIBRARY_CTX: Role.LIBRARY_CTX,
    LEGACY_BIN: Role.LEGACY_BIN,
    LEGACY_CTX: Role.LEGACY_CTX,
}


def _classify_one(name: str, names: set[str], prefixes: _Prefixes) -> Naming | None:
    role = _FIXED.get(name)
    if role is not None:
        return Naming(role, name)
    for special, role in ((LIBRARY_BIN, Role.LIBRARY_BIN), (LIBRARY_CTX, Role.LIBRARY_CTX)):
        if name.endswith(special):
            prefix = name[: -len(special)]
            return Naming(role, special, prefix)
    if not name.startswith(FFI_PREFIX) or "." in name:
        # No C identifier has a dot: `__tvm_ffi_f.cold` and `.part.0` are compiler clones.
        return None
    for special, role in ((METADATA_PREFIX, Role.METADATA), (DOC_PREFIX, Role.DOC)):
        if name.startswith(special) and len(name) > len(special):
            return Naming(role, name[len(special) :])
    if name.startswith(CUBIN_PREFIX) and len(name) > len(CUBIN_PREFIX):
        stem = name[: -len(CUBIN_END_SUFFIX)]
        if name.endswith(CUBIN_END_SUFFIX) and stem in names and stem != CUBIN_PREFIX:
            return Naming(Role.CUBIN_END, stem[len(CUBIN_PREFIX) :])
        return Naming(Role.CUBIN, name[len(CUBIN_PREFIX) :])
    rest = name[len(FFI_PREFIX) :]
    if not rest:
        return None
    length = prefixes.longest(rest) if prefixes else 0
    return Naming(Role.FUNCTION, rest[length:], rest[:length])
