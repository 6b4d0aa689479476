"""The command line's modules: no import cycle among them, and a fast `inspect` route that
loads neither typer nor rich."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

from conftest import FIXTURES, ROOT, ffitool

CLI = ROOT / "ffitool" / "cli"
PACKAGE = "ffitool.cli"


def cli_imports(source: str, module: str) -> set[str]:
    """The ffitool.cli modules that `module` imports anywhere: at module level, in a
    function, under TYPE_CHECKING. A function-level import is a cycle all the same; it only
    hides it until that function runs."""
    modules = {f"{PACKAGE}.{path.stem}" for path in CLI.glob("*.py")}
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package that holds `module`
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            imported.add(base)
            imported.update(f"{base}.{alias.name}" for alias in node.names)
    return (imported & modules) - {module}


def cli_import_graph() -> dict[str, set[str]]:
    return {
        f"{PACKAGE}.{path.stem}": cli_imports(path.read_text(), f"{PACKAGE}.{path.stem}")
        for path in CLI.glob("*.py")
        if path.stem != "__init__"
    }


def test_cli_modules_import_one_another_without_a_cycle():
    graph = cli_import_graph()
    # The graph sees imports inside functions: the entry point reaches the app through one.
    assert "ffitool.cli.app" in graph["ffitool.cli.main"]
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_a_cycle_through_a_function_level_import_is_found():
    """What the graph test relies on: `import` inside a function, and `from PACKAGE import
    NAME` of a submodule, are edges too."""
    source = "def run():\n    from ffitool.cli import app\n    import ffitool.cli.output\n"
    assert cli_imports(source, "ffitool.cli.main") == {"ffitool.cli.app", "ffitool.cli.output"}
    assert cli_imports("from .app import app\n", "ffitool.cli.main") == {"ffitool.cli.app"}


def inspect_loads(path: str, prefixes: tuple[str, ...]) -> tuple[str, list[str]]:
    """`ffitool inspect --json PATH` as the console script runs it: its report, and the
    modules whose names start with one of `prefixes` that were loaded by its end."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['ffitool', 'inspect', '--json', {path!r}]\n"
        "try:\n"
        "    runpy.run_module('ffitool', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        f"loaded = [m for m in sys.modules if m.startswith({prefixes!r})]\n"
        "sys.stderr.write(repr(sorted(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded: list[str] = ast.literal_eval(result.stderr)
    return result.stdout, loaded


def test_the_fast_inspect_route_imports_neither_typer_nor_rich():
    report, loaded = inspect_loads("fixtures/bin/libffi_c.so", ("typer", "click", "rich"))
    assert loaded == []
    assert json.loads(report)["files"][0]["path"] == "fixtures/bin/libffi_c.so"


def loaded_decoders(path: str) -> list[str]:
    """The ffitool.payloads submodules (the decoders) that `ffitool inspect --json PATH` loads."""
    return inspect_loads(path, ("ffitool.payloads.",))[1]


def test_a_decoder_loads_only_for_a_payload_it_reads(tmp_path):
    """libffi_c.so's payloads are of test kinds no decoder knows: no decoder module loads.
    With a `cuda_ptx` module packed in, the PTX decoder does, and no other."""
    assert loaded_decoders("fixtures/bin/libffi_c.so") == []
    source = tmp_path / "libffi_c.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", source)
    ptx = tmp_path / "kernels.ptx"
    ptx.write_bytes(b".version 8.4\n.target sm_90a\n.visible .entry k() { ret; }\n")
    packed = tmp_path / "libptx.so"
    result = ffitool("pack", str(source), "--add", f"cuda_ptx:{ptx}", "-o", str(packed), "--quiet")
    assert result.returncode == 0, result.stderr
    assert loaded_decoders(str(packed)) == ["ffitool.payloads.ptx"]
