"""The rule registry: every finding ffitool reports is built here, from one of these rules.

A rule is a stable code with a fixed severity, a one-line title, an explanation that says
how to fix what it found, and the functions that report it. Codes are what CI configurations
select, ignore and explain, so a code never changes meaning. docs/rules.md is generated from
this registry (`python3 -m ffitool.rules_doc`), and the tests check that it is up to date.

Prefixes group the rules by what they look at (PREFIXES).
"""

from __future__ import annotations

from dataclasses import dataclass

from ffitool.findings import Finding, Severity


@dataclass(frozen=True)
class Rule:
    """One kind of finding: its code, how bad it is, and what to do about it."""

    code: str
    severity: Severity
    title: str
    explanation: str
    emitted_by: tuple[str, ...]
    """The functions that report it, as `module:qualname`. The tests hold the code to them:
    it is passed to a call (`finding("B201", ...)`, a check's registration) in these
    functions and nowhere else, and each of them exists."""
    requires: str = ""
    """The `ffitool check` setting that asks for a requirement rule (`require-function`);
    empty for the rules that always run."""


PREFIXES = {
    "B": "the blob's bytes (the codec reports them while decoding, with the byte offset);"
    " B3xx, the payloads (what the payload decoders find in them)",
    "L": "how the library holds its symbols and blob (what `dlsym` and the loader will see)",
    "R": "requirements a project states (`--require-function`, `--allow-kind`, ...),"
    " only checked when asked for",
}
"""What the rules of each code prefix look at."""

_ERROR, _WARNING, _INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

_RULES = (
    Rule(
        "B100",
        _ERROR,
        "the runtime rejects the blob",
        "A field is truncated, a length runs past the end, a key or payload is empty, a child"
        " index is out of range or there is no module. The runtime refuses the blob, or reads"
        " bytes that are not in it (a length past the end is padded with zeros; an nbytes past"
        " the symbol copies whatever memory follows). The message says what was being read and"
        " the offset where. Regenerate the blob with TVM's PackImportsToBytes or `ffitool pack`.",
        ("ffitool.library:_library_bin",),
    ),
    Rule(
        "B201",
        _WARNING,
        "trailing bytes after the last module",
        "nbytes covers bytes that no module uses. The runtime ignores them, but the blob cannot"
        " be reproduced from its modules (`extract` then `pack --manifest` drops them).",
        ("ffitool.blob:decode",),
    ),
    Rule(
        "B202",
        _WARNING,
        "import cycle",
        "A module imports itself through its imports. The runtime loads it, and the modules on"
        " the cycle hold references to each other and are never freed.",
        ("ffitool.blob:_tree_findings",),
    ),
    Rule(
        "B203",
        _WARNING,
        "a module imports an earlier module",
        "TVM writes children after their parents; a backward import means the blob was not"
        " written by TVM's serializer. It loads, but check the tool that wrote it.",
        ("ffitool.blob:_tree_findings",),
    ),
    Rule(
        "B204",
        _WARNING,
        "a module's imports are unsorted or duplicated",
        "Each module's import list is expected in ascending order without repeats. A duplicate"
        " makes the runtime import the same module twice.",
        ("ffitool.blob:_tree_findings",),
    ),
    Rule(
        "B205",
        _WARNING,
        "more than one `_lib` module",
        "Only one module can stand for the library's own functions; the others resolve the same"
        " symbols again. Keep one `_lib` module.",
        ("ffitool.blob:_tree_findings",),
    ),
    Rule(
        "B206",
        _ERROR,
        "modules not reachable from the root",
        "The runtime deserializes every module (each loader runs) and then drops these: nothing"
        " imports them, so neither they nor their functions can be reached from the loaded"
        " module. An indptr that does not start at 0 (B207) loses a module this way when child"
        " entry 0 was its only import. Import them from the root or drop them (`ffitool pack"
        " --remove`).",
        ("ffitool.blob:_tree_findings",),
    ),
    Rule(
        "B207",
        _WARNING,
        "non-canonical CSR",
        "The import table's indptr does not start at 0, goes back, or leaves child entries"
        " unused. The runtime reads it, but `extract` then `pack --manifest` writes a canonical"
        " table, so the blob does not round-trip byte for byte.",
        ("ffitool.blob:_layout_findings",),
    ),
    Rule(
        "B208",
        _WARNING,
        "a kind that is not valid UTF-8",
        "The runtime looks the kind up as `ffi.Module.load_from_bytes.<kind>`; no loader is"
        " registered under a name that is not text. Fix the tool that wrote the kind.",
        ("ffitool.blob:_Kinds.text",),
    ),
    Rule(
        "B209",
        _ERROR,
        "import rows overlap into an excessive number of imports",
        "indptr goes back so that the rows expand to more than 2 x the child indices + 65,536"
        " imports, which the runtime would all create: a small blob that costs gigabytes."
        " The offset is the indptr entry where the bound is passed.",
        ("ffitool.blob:_check_rows",),
    ),
    Rule(
        "B301",
        _INFO,
        "legacy blob read up to a module without a length prefix",
        "Old TVM blobs store some payloads without a length; reading stops there. Nothing after"
        " it is listed.",
        ("ffitool.blob:decode_legacy",),
    ),
    Rule(
        "B302",
        _WARNING,
        "a payload whose content does not match its kind",
        "The module's kind names one format and its payload is another: PTX under `cuda_cubin`,"
        " a cubin under `cuda_ptx`. The kind chooses the loader the runtime calls, which then"
        " fails on the bytes or misreads them. The message names both formats, the offset is the"
        " payload's. Add the file under the kind of what it holds (`ffitool pack --add"
        " KIND:FILE`).",
        ("ffitool.library:_payload_findings",),
    ),
    Rule(
        "B303",
        _WARNING,
        "a payload its decoder cannot read",
        "The payload is of a known kind (or starts like a known format) but is malformed:"
        " truncated, a table running past its end, text that is not text. The kind's loader"
        " would most likely fail on it too. The message says what was being read and the"
        " offset where, in the blob; size and sha256 are still reported. Rebuild the payload.",
        ("ffitool.library:_payload_findings",),
    ),
    Rule(
        "B304",
        _INFO,
        "a payload too large to decode",
        "Payloads are decoded up to 64 MiB; a larger one is reported by kind, size and sha256"
        " only, so that reading a library never costs its largest payload's size in memory.",
        ("ffitool.library:_payload_findings",),
    ),
    Rule(
        "L101",
        _ERROR,
        "the blob symbol is not visible to dlsym",
        "The runtime finds `__tvm_ffi__library_bin` with dlsym, which only sees the dynamic"
        " symbol table's global or weak symbols of default or protected visibility. Export it:"
        ' no `static`, default visibility (`__attribute__((visibility("default")))`), not'
        " hidden by a version script.",
        ("ffitool.library:_placement_findings",),
    ),
    Rule(
        "L102",
        _WARNING,
        "the blob symbol's size is smaller than 8 + nbytes",
        "The symbol claims fewer bytes than the blob occupies. The runtime reads nbytes and"
        " ignores the symbol size, but tools that copy the symbol cut the blob short. Declare"
        " the array with its full size.",
        ("ffitool.library:_size_findings",),
    ),
    Rule(
        "L103",
        _ERROR,
        "the blob lives in a NOBITS section (.bss)",
        "A zero-initialised array has no bytes in the file; at load time it is all zeros, the"
        " runtime reads nbytes = 0 and fails. Give the array its contents (an initialiser).",
        ("ffitool.library:_placement_findings",),
    ),
    Rule(
        "L104",
        _ERROR,
        "the blob symbol's address is not backed by file bytes",
        "The symbol points outside every loaded segment's file bytes, so what the runtime reads"
        " there is not the blob. The library is malformed; relink it.",
        ("ffitool.library:_library_bin",),
    ),
    Rule(
        "L105",
        _WARNING,
        "the library exports functions but its blob has no `_lib` module",
        "Functions are reached through the `_lib` module of the blob; without one the loaded"
        " module cannot call them. Add `_lib` as module 0 (what `ffitool pack` does).",
        ("ffitool.library:_library_bin",),
    ),
    Rule(
        "L210",
        _WARNING,
        "a `__tvm_ffi_` function that is not exported dynamically",
        "`Module.get_function(name)` looks `__tvm_ffi_<name>` up with dlsym; a hidden, local or"
        " .symtab-only function is never found. Export it with default visibility.",
        ("ffitool.library:_functions_not_exported",),
    ),
    Rule(
        "L211",
        _ERROR,
        "a `__tvm_ffi_` function symbol that is not a function in code",
        "The runtime calls every `__tvm_ffi_<name>` it resolves as a packed function; a data"
        " object, or a symbol outside an executable section, crashes the caller. Rename the"
        " object or make it a function.",
        ("ffitool.library:_functions_not_code",),
    ),
    Rule(
        "L212",
        _WARNING,
        "a metadata or doc getter without its function",
        "`__tvm_ffi__metadata_<name>` and `__tvm_ffi__doc_<name>` describe `__tvm_ffi_<name>`;"
        " without that function they describe nothing. Export the function or drop the getter.",
        ("ffitool.library:_getters_without_function",),
    ),
    Rule(
        "L213",
        _ERROR,
        "an embedded cubin's symbol pair delimits no bytes of the file",
        "`TVM_FFI_EMBED_CUBIN(<name>)` hands the CUDA driver the bytes from"
        " `__tvm_ffi__cubin_<name>` to `__tvm_ffi__cubin_<name>_end`. Without a defined `_end`,"
        " with the two in different sections, the end before the start, or bytes the file does"
        " not hold (a NOBITS section, past the section or segment), what the driver gets is not"
        " the cubin. Two pairs over the same bytes are not two cubins either (the embedding"
        " never writes them; the later is reported). Embed it again with"
        " `tvm_ffi.utils.embed_cubin`.",
        ("ffitool.library:_cubin_bytes", "ffitool.library:_embedded_cubins"),
    ),
    Rule(
        "L214",
        _WARNING,
        "an embedded cubin its decoder cannot read",
        "The bytes between `__tvm_ffi__cubin_<name>` and its `_end` start like a cubin, a"
        " fatbin or PTX, but that format's decoder cannot read them: the CUDA driver would most"
        " likely refuse them too. The message says what was being read and where, from the"
        " cubin's start; size and sha256 are still reported. Embed the file nvcc wrote again.",
        ("ffitool.library:_undecoded",),
    ),
    Rule(
        "L300",
        _INFO,
        "a legacy `__tvm_dev_mblob` blob, which tvm-ffi ignores",
        "TVM before tvm-ffi embedded modules under `__tvm_dev_mblob`; `tvm_ffi.load_module`"
        " does not read it. Rebuild with a tvm-ffi based TVM, or move the modules with"
        " `ffitool extract` and `ffitool pack`.",
        ("ffitool.library:_placement_findings",),
    ),
    Rule(
        "R100",
        _ERROR,
        "no FFI symbols at all (--require-ffi)",
        "The library defines no `__tvm_ffi_` function, getter or blob: the build produced"
        " something other than an FFI library. Also reported for a directory or wheel given to"
        " `check` in which no ELF, Mach-O or PE file or ar archive was found: an empty build"
        " fails rather than passes. Reported only with `require-ffi`.",
        ("ffitool.checks:require_ffi", "ffitool.checks:nothing_found"),
        requires="require-ffi",
    ),
    Rule(
        "R101",
        _ERROR,
        "a required function is missing (--require-function)",
        "No exported `__tvm_ffi_<name>` function carries the required name, so"
        " `Module.get_function(name)` fails. Check the export list of the build.",
        ("ffitool.checks:required_functions",),
        requires="require-function",
    ),
    Rule(
        "R102",
        _ERROR,
        "a required module kind is missing (--require-kind)",
        "No module of the blob has the required kind, e.g. the device code was not embedded."
        " Add it with `ffitool pack --add KIND:FILE` or fix the build.",
        ("ffitool.checks:required_kinds",),
        requires="require-kind",
    ),
    Rule(
        "R103",
        _ERROR,
        "a module kind outside the allowed kinds (--allow-kind)",
        "The blob holds a module whose kind is not in the allowed list; a runtime without that"
        " loader fails to load the library. `_lib` is always allowed.",
        ("ffitool.checks:allowed_kinds",),
        requires="allow-kind",
    ),
    Rule(
        "R104",
        _ERROR,
        "a blob over the size limit (--max-blob-size)",
        "8 + nbytes exceeds the configured maximum. Large blobs are loaded into memory whole by"
        " the runtime; ship the big payloads separately or raise the limit.",
        ("ffitool.checks:max_blob_size",),
        requires="max-blob-size",
    ),
    Rule(
        "R105",
        _ERROR,
        "device code without code for a required architecture (--require-arch)",
        "A device payload (a module decoded as a cubin, fatbin, PTX or TVM `cuda` module), an"
        " embedded cubin or a cubin or fatbin file has neither SASS that runs on the"
        " architecture nor PTX the driver can compile for it, so its kernels fail to load on"
        " that GPU. SASS for sm_XY"
        " runs on sm_XY and later minor versions of the same major; PTX for compute_XY JITs to"
        " XY and later; `a` code (sm_90a) runs only on its own architecture; `f` code (sm_100f)"
        " on later minor versions of its family. Build for the architecture (nvcc -gencode),"
        " or embed PTX for an earlier one.",
        ("ffitool.checks:required_archs",),
        requires="require-arch",
    ),
)

RULES: dict[str, Rule] = {rule.code: rule for rule in _RULES}
"""Every rule, by code, in code order."""


def finding(code: str, message: str, offset: int | None = None) -> Finding:
    """A finding of a registered rule; its severity is the rule's, never chosen at the site."""
    return Finding(code, RULES[code].severity, message, offset)


def matching(selectors: tuple[str, ...]) -> set[str]:
    """The codes that a list of codes or prefixes (`B2`, `L101`, `R`) names; unknown ones fail.

    Raises ValueError naming the first selector that matches no rule, so that a typo in a
    CI configuration is an error rather than a check that silently never runs.
    """
    chosen: set[str] = set()
    for selector in selectors:
        hits = {code for code in RULES if code.startswith(selector.upper())}
        if not selector or not hits:
            raise ValueError(selector)
        chosen |= hits
    return chosen
