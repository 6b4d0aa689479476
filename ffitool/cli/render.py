"""Rich rendering of inspect and blob reports for people.

Colour follows rich's rules: none when stdout is not a terminal or NO_COLOR is set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ffitool.findings import Finding, Severity, printable
from ffitool.library import BlobReport, InspectedFile, Library, LibraryBin, ModuleInfo
from ffitool.pack.plan import Plan

PROGRESS_THRESHOLD = 64 << 20
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def print_inspected(files: Sequence[InspectedFile], console: Console | None = None) -> None:
    """Print every library of every file."""
    console = console or Console()
    for inspected in files:
        console.print(
            Text(f"{inspected.path}", style="bold"),
            Text(f"  {inspected.format}, {_bytes(inspected.size)}"),
        )
        for library in inspected.libraries:
            console.print(library_view(library))
        console.print()


def print_blob_report(report: BlobReport, console: Console | None = None) -> None:
    """Print a raw blob's modules, tree and findings."""
    console = console or Console()
    console.print(
        Text(report.path, style="bold"),
        Text(f"  raw blob, {_bytes(report.size)}, nbytes {report.nbytes}"),
    )
    console.print(_modules_table(report.modules))
    console.print(import_tree(report.modules))
    if report.findings:
        console.print(_findings_table(report.findings))


def print_plan(
    library: Path, destination: Path, plan: Plan, size: int, console: Console | None = None
) -> None:
    """What `pack --dry-run` shows: the new tree, where each payload comes from, the size."""
    console = console or Console()
    console.print(
        Text(f"{library} -> {destination}", style="bold"), Text(f"  blob of {size} bytes")
    )
    table = Table(title=f"Planned modules ({len(plan.modules)})", title_justify="left")
    for column in ("index", "kind", "size", "imports", "origin", "source"):
        table.add_column(column, overflow="fold")
    for index, module in enumerate(plan.modules):
        source = module.source
        table.add_row(
            str(index),
            printable(module.kind),
            "-" if source is None else str(source.size),
            ", ".join(map(str, module.imports)) or "-",
            module.origin,
            "-" if source is None else f"{source.path}@{source.offset}",
        )
    console.print(table)


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for blobs over 64 MiB, and only when stderr is a terminal."""
    console = Console(stderr=True)
    if not enabled or total <= PROGRESS_THRESHOLD or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("packing", total=total)
        yield lambda done: progress.advance(task, done)


def library_view(library: Library) -> Group:
    """One library: heading, functions, special symbols, blob and findings."""
    title = f"{library.kind}, {library.machine}, {library.bits}-bit {library.endianness}-endian"
    tables = ", ".join(t.value for t in library.symbol_tables) or "none (stripped)"
    heading = Text(f"[{printable(library.member)}] " if library.member else "", style="bold")
    heading.append(f"{title}; symbol tables: {tables}")
    parts: list[object] = [heading]
    parts.append(_functions_table(library) if library.functions else Text("No FFI functions."))
    specials = [s for s in library.symbols if s.naming.role.value != "function"]
    if specials:
        table = Table(title="Special symbols", title_justify="left")
        for column in ("symbol", "role", "address", "size", "section", "exported"):
            table.add_column(column, overflow="fold")
        for s in specials:
            table.add_row(
                printable(s.symbol.name),
                s.naming.role.value,
                f"{s.symbol.address:#x}",
                str(s.symbol.size),
                s.symbol.section or "UND",
                _yes(s.dynamic),
            )
        parts.append(table)
    if library.library_bin is not None:
        parts.extend(_blob_parts(library.library_bin))
    for system_lib_bin in library.system_lib_bins:
        parts.extend(_blob_parts(system_lib_bin))
    if library.findings:
        parts.append(_findings_table(library.findings))
    return Group(*parts)


def _functions_table(library: Library) -> Table:
    table = Table(title=f"Functions ({len(library.functions)})", title_justify="left")
    for column in ("name", "symbol", "address", "size", "exported", "metadata", "doc"):
        table.add_column(column, overflow="fold")
    for f in library.functions:
        table.add_row(
            printable(f.name),
            printable(f.symbol.symbol.name),
            f"{f.symbol.symbol.address:#x}",
            str(f.symbol.symbol.size),
            _yes(f.symbol.dynamic),
            _yes(f.has_metadata),
            _yes(f.has_doc),
        )
    return table


def _blob_parts(library_bin: LibraryBin) -> list[object]:
    symbol = library_bin.symbol.symbol
    offset = "n/a" if library_bin.file_offset is None else f"{library_bin.file_offset:#x}"
    nbytes = "n/a" if library_bin.nbytes is None else str(library_bin.nbytes)
    line = Text("System-lib blob " if library_bin.prefix else "Blob ", style="bold")
    prefix = f"prefix {printable(library_bin.prefix)}, " if library_bin.prefix else ""
    line.append(
        f"{printable(symbol.name)} ({prefix}{library_bin.layout}) in {symbol.section}"
        f" at {symbol.address:#x}, "
        f"file offset {offset}, symbol size {symbol.size}, nbytes {nbytes}"
    )
    parts: list[object] = [line]
    if library_bin.modules:
        parts.append(_modules_table(library_bin.modules))
        parts.append(import_tree(library_bin.modules))
    if library_bin.findings:
        parts.append(_findings_table(library_bin.findings))
    return parts


def _modules_table(modules: Sequence[ModuleInfo]) -> Table:
    table = Table(title=f"Modules ({len(modules)})", title_justify="left")
    for column in ("index", "kind", "size", "sha256", "imports"):
        table.add_column(column, overflow="fold")
    for m in modules:
        table.add_row(
            str(m.index),
            printable(m.kind),
            "-" if m.size is None else str(m.size),
            "-" if m.sha256 is None else m.sha256[:16],
            ", ".join(map(str, m.imports)) or "-",
        )
    return table


def import_tree(modules: Sequence[ModuleInfo]) -> Tree:
    """The import tree from module 0; shared modules expand once, cycles are shown, not followed."""
    parents: dict[int, int] = {}
    for m in modules:
        for child in set(m.imports):
            parents[child] = parents.get(child, 0) + 1
    expanded: set[int] = set()
    tree = Tree(Text("Import tree", style="bold"))

    def label(index: int, note: str) -> Text:
        module = modules[index]
        text = Text(f"[{index}] {printable(module.kind)}")
        if module.size is not None:
            text.append(f" ({_bytes(module.size)})")
        if parents.get(index, 0) > 1:
            text.append(" shared", style="magenta")
        if note:
            text.append(f" {note}", style="dim")
        return text

    def add(node: Tree, index: int, path: tuple[int, ...]) -> None:
        stack = [(node, index, path)]
        while stack:
            parent, current, trail = stack.pop()
            if current in trail:
                parent.add(label(current, "(cycle: back to an ancestor, not followed)"))
                continue
            if current in expanded:
                parent.add(label(current, "(expanded above)" if modules[current].imports else ""))
                continue
            expanded.add(current)
            branch = parent.add(label(current, ""))
            for child in reversed(modules[current].imports):
                stack.append((branch, child, (*trail, current)))

    if modules:
        add(tree, 0, ())
    for index in range(len(modules)):
        if index not in expanded:
            add(tree.add(Text("unreachable from the root", style="yellow")), index, ())
    return tree


def _findings_table(findings: Sequence[Finding]) -> Table:
    table = Table(title=f"Findings ({len(findings)})", title_justify="left")
    for column in ("severity", "code", "offset", "message"):
        table.add_column(column, overflow="fold")
    for f in findings:
        table.add_row(
            Text(f.severity.value, style=_SEVERITY_STYLE[f.severity]),
            f.code,
            "-" if f.offset is None else str(f.offset),
            printable(f.message),
        )
    return table


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _bytes(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size} B ({size / 1024:.1f} KiB)"
