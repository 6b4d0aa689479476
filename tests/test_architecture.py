"""The import directions docs/architecture.md states, enforced on the source.

Every `import` in ffitool is read from the AST (at module level, in functions and under
TYPE_CHECKING alike: a deferred import is still a dependency), and each layer may only reach
the layers the document allows. A new module must be placed in a layer here before it can land.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "ffitool"

CORE = {
    "ffitool.errors",
    "ffitool.units",
    "ffitool.findings",
    "ffitool.symbols",
    "ffitool.rules",
    "ffitool.blob",
    "ffitool.files",
    "ffitool.schemas",
}
"""Bytes and words every layer shares: errors, findings and their rules, the blob codec."""
NEUTRAL_FORMATS = {
    "ffitool.formats",
    "ffitool.formats.base",
    "ffitool.formats.sniff",
    "ffitool.formats.strtab",
    "ffitool.formats.archive",
}
"""The format registry and what every format package shares; no format's own code."""
FORMAT_PACKAGES = ("elf", "macho", "pe")


def _layer(module: str) -> str:
    """Which layer of docs/architecture.md a module belongs to."""
    if module == "ffitool":
        return "api"
    if module in CORE:
        return "core"
    if module in NEUTRAL_FORMATS:
        return "formats"
    if module.startswith("ffitool.formats."):
        return "format:" + module.split(".")[2]
    if module.startswith("ffitool.edit"):
        return "edit"
    if module.startswith("ffitool.payloads"):
        return "payloads"
    if module in ("ffitool.library", "ffitool.targets"):
        return "model"
    if module.startswith("ffitool.cli") or module == "ffitool.__main__":
        return "cli"
    return "consumers"  # checks, reports, pack, manifests: what reads the model


ALLOWED = {
    "core": {"core"},
    "edit": {"core", "edit"},
    "formats": {"core", "formats"},
    **{f"format:{name}": {"core", "formats", "edit", f"format:{name}"} for name in FORMAT_PACKAGES},
    "payloads": {"core", "formats", "format:elf", "payloads"},
    "model": {"core", "formats", "payloads", "model"},
    "consumers": {"core", "formats", "edit", "payloads", "model", "consumers"},
    "cli": {"core", "formats", "edit", "payloads", "model", "consumers", "cli"},
    "api": {"core", "formats", "edit", "payloads", "model", "consumers"},
}
"""Layer -> the layers it may import ("api" is the package's `__init__`, which loads what it
exports on first use). Note what is missing: formats never reach the model,
pack, checks or the CLI; the model and the consumers never import a format package (they go
through the registry); one format package never imports another."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ffitool module a source file imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from ffitool.formats import sniff` imports the submodule when there is one
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if _source_of(candidate) is not None:
                    found.add(candidate)
    return {name for name in found if name == "ffitool" or name.startswith("ffitool.")}


def _source_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


SOURCES = sorted(PACKAGE.rglob("*.py"))


def _violations(importer: str, imported: set[str]) -> list[str]:
    """The imports of `importer` that its layer may not make."""
    allowed = ALLOWED[_layer(importer)]
    return sorted(
        f"{importer} ({_layer(importer)}) imports {name} ({_layer(name)})"
        for name in imported - {importer, "ffitool"}
        if _layer(name) not in allowed
    )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_the_documented_way(path: Path) -> None:
    assert _violations(_module_name(path), _imports(path)) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("ffitool.formats.elf.reader", "ffitool.library"),  # a reader reaching the model
        ("ffitool.formats.pe.writer", "ffitool.formats.elf.reader"),  # one format, another
        ("ffitool.formats.macho.verify", "ffitool.pack"),
        ("ffitool.library", "ffitool.formats.macho.reader"),  # the model, past the registry
        ("ffitool.pack", "ffitool.formats.pe.writer"),
        ("ffitool.edit.plan", "ffitool.formats.elf.writer"),
        ("ffitool.checks", "ffitool.cli.render"),
        ("ffitool", "ffitool.cli.main"),
        ("ffitool.payloads.ptx", "ffitool.library"),  # a decoder reaching the model
        ("ffitool.formats.elf.reader", "ffitool.payloads"),
    ],
)
def test_a_forbidden_import_is_seen(importer: str, imported: str) -> None:
    assert _violations(importer, {imported}) != []


def test_every_module_has_a_layer() -> None:
    assert {_layer(_module_name(path)) for path in SOURCES} == set(ALLOWED)


def test_importing_one_format_loads_no_other_nor_pyelftools() -> None:
    """What the layering promises at run time: the PE and Mach-O packages, their writers and
    verifiers included, load neither the ELF package nor pyelftools, and the registry alone
    loads no format's reader."""
    import subprocess
    import sys

    probe = (
        "import sys, importlib\n"
        "for name in sys.argv[1:]: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('elftools', 'ffitool.formats.'))))"
    )
    cases = {
        "ffitool.formats.pe.verify": {"elf", "macho", "elftools"},
        "ffitool.formats.macho.verify": {"elf", "pe", "elftools"},
        "ffitool.formats": {"elf.", "macho.", "pe.", "elftools"},
    }
    for module, absent in cases.items():
        loaded = subprocess.run(
            [sys.executable, "-c", probe, module],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        for name in absent:
            prefix = "elftools" if name == "elftools" else f"ffitool.formats.{name}"
            assert f"'{prefix}" not in loaded, (module, loaded)
