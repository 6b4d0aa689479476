"""Rich rendering of inspect and blob reports for people.

Colour follows rich's rules: none when stdout is not a terminal or NO_COLOR is set. Without a
terminal nothing is wrapped either (see `output_console`), so `grep` finds every name whole.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ffitool.blob import reachable_from
from ffitool.edit.plan import Plan
from ffitool.findings import Finding, Severity, printable
from ffitool.library import (
    BlobReport,
    EmbeddedCubin,
    InspectedFile,
    Library,
    LibraryBin,
    ModuleInfo,
)
from ffitool.report import records_sizes
from ffitool.units import format_size

PROGRESS_THRESHOLD = 64 << 20
ROWS_SHOWN = 2000
"""Rows of a text table, and lines of an import tree. Rich renders about 2000 rows a second,
so a table of 500k functions would take minutes; `--json` lists everything."""
IMPORTS_SHOWN = 64
"""Imports listed in one module's table cell."""
CELL_CHARS = 1024
"""Characters of one name, kind or message shown in a table cell, tree label or heading;
the rest is counted (`... (K more characters)`). Rich pads a column to its widest cell, so
one megabyte-long kind would otherwise widen every row of its table; `--json` has it all."""
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
UNWRAPPED_WIDTH = 1 << 20
"""The console width when stdout is not a terminal: wider than any line ffitool prints (rows
are capped at ROWS_SHOWN cells of bounded count), so rich never folds a cell or a heading."""


def output_console() -> Console:
    """The console for stdout: the terminal's width on a terminal, else UNWRAPPED_WIDTH.

    Rich otherwise wraps piped output at $COLUMNS or 80 and folds table cells, which splits
    symbol names across lines for `grep` and `cut`. The test is the stream itself, not rich's
    `is_terminal`, which FORCE_COLOR and TTY_COMPATIBLE turn on without a terminal.
    """
    try:
        terminal = sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        terminal = False
    return Console(width=None if terminal else UNWRAPPED_WIDTH)


def print_inspected(files: Sequence[InspectedFile], console: Console | None = None) -> None:
    """Print every library of every file; a device code file is one line (a wheel holds
    thousands of them)."""
    console = console or output_console()
    for inspected in files:
        if inspected.device is not None:
            console.print(shown(inspected.path, "bold"), device_line(inspected))
            continue
        console.print(
            shown(inspected.path, "bold"),
            Text(f"  {inspected.format}, {format_size(inspected.size)}"),
        )
        for library in inspected.libraries:
            console.print(library_view(library))
        console.print()


def device_line(inspected: InspectedFile) -> Text:
    """What follows a device code file's path: its format, size and decoded summary."""
    summary = "" if inspected.device is None else f", {_cut(inspected.device.summary())}"
    return Text(f"  {inspected.format}, {format_size(inspected.size)}{summary}")


def print_blob_report(report: BlobReport, console: Console | None = None) -> None:
    """Print a raw blob's modules, tree and findings."""
    console = console or output_console()
    console.print(
        shown(report.path, "bold"),
        Text(f"  raw blob, {format_size(report.size)}, nbytes {report.nbytes}"),
    )
    console.print(_modules_table(report.modules))
    console.print(_tree_part(report.modules, report.findings))
    if report.findings:
        console.print(_findings_table(report.findings))


def print_plan(
    library: Path, destination: Path, plan: Plan, size: int, console: Console | None = None
) -> None:
    """What `pack --dry-run` shows: the new tree, where each payload comes from, the size."""
    console = console or output_console()
    console.print(
        shown(f"{library} -> {destination}", "bold"), Text(f"  blob of {format_size(size)}")
    )
    table = _table(
        f"Planned modules ({len(plan.modules)})",
        ("index", "kind", "size", "imports", "origin", "source"),
        len(plan.modules),
    )
    for index, module in enumerate(plan.modules[:ROWS_SHOWN]):
        source = module.source
        table.add_row(
            str(index),
            shown(module.kind),
            "-" if source is None else str(source.size),
            _imports_cell(module.imports),
            shown(module.origin),
            "-" if source is None else shown(f"{source.path}@{source.offset}"),
        )
    console.print(table)


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for blobs over 64 MiB, and only when stderr is a terminal."""
    console = Console(stderr=True)
    if not enabled or total <= PROGRESS_THRESHOLD or not console.is_terminal:
        yield None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        SizeColumn(),
        SpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("packing", total=total)
        yield lambda done: progress.advance(task, done)


class SizeColumn(ProgressColumn):
    """`done/total` in `format_size` units; rich's DownloadColumn would say `MB` (decimal)."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else format_size(int(task.total))
        return Text(f"{format_size(int(task.completed))}/{total}", style="progress.download")


class SpeedColumn(ProgressColumn):
    """Bytes per second in `format_size` units, where rich's TransferSpeedColumn says `MB/s`."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown_speed = "?" if speed is None else f"{format_size(int(speed))}/s"
        return Text(shown_speed, style="progress.data.speed")


def library_view(library: Library) -> Group:
    """One library: heading, functions, special symbols, blob and findings."""
    title = f"{library.kind}, {library.machine}, {library.bits}-bit {library.endianness}-endian"
    if library.slice is not None:
        place = library.slice
        title += f"; slice {place.arch} at offset {place.offset:#x} ({format_size(place.size)})"
    if library.signature is not None:
        title += f"; code signature: {library.signature}"
    tables = ", ".join(t.value for t in library.symbol_tables) or "none (stripped)"
    heading = shown(f"[{library.member}] " if library.member else "", "bold")
    heading.append(f"{title}; symbol tables: {tables}")
    parts: list[RenderableType] = [heading]
    sized = records_sizes(library.format)
    parts.append(
        _functions_table(library, sized) if library.functions else Text("No FFI functions.")
    )
    # A PE forwarder names a function of another DLL: not one of this library's functions,
    # but what GetProcAddress hands out under the FFI name.
    forwarded = [s for s in library.symbols if s.symbol.binding == "FORWARDER"]
    if forwarded:
        table = _table(
            f"Forwarded exports ({len(forwarded)})", ("symbol", "forwarded to"), len(forwarded)
        )
        for s in forwarded[:ROWS_SHOWN]:
            table.add_row(
                shown(s.symbol.file_name), shown(s.symbol.type.removeprefix("FORWARDER to "))
            )
        parts.append(table)
    specials = [s for s in library.symbols if s.naming.role.value != "function"]
    if specials:
        table = _table(
            "Special symbols",
            ("symbol", "role", "address", "size", "section", "exported"),
            len(specials),
        )
        for s in specials[:ROWS_SHOWN]:
            table.add_row(
                shown(s.symbol.file_name),
                s.naming.role.value,
                f"{s.symbol.address:#x}",
                _size(s.symbol.size, sized),
                shown(s.symbol.section or "UND"),
                _yes(s.dynamic),
            )
        parts.append(table)
    if library.library_bin is not None:
        parts.extend(_blob_parts(library.library_bin, sized))
    for system_lib_bin in library.system_lib_bins:
        parts.extend(_blob_parts(system_lib_bin, sized))
    if library.cubins:
        parts.append(_cubins_table(library.cubins))
    if library.findings:
        parts.append(_findings_table(library.findings))
    return Group(*parts)


def _functions_table(library: Library, sized: bool) -> Table:
    table = _table(
        f"Functions ({len(library.functions)})",
        ("name", "symbol", "address", "size", "exported", "metadata", "doc"),
        len(library.functions),
    )
    for f in library.functions[:ROWS_SHOWN]:
        table.add_row(
            shown(f.name),
            shown(f.symbol.symbol.file_name),
            f"{f.symbol.symbol.address:#x}",
            _size(f.symbol.symbol.size, sized),
            _yes(f.symbol.dynamic),
            _yes(f.has_metadata),
            _yes(f.has_doc),
        )
    return table


def _blob_parts(library_bin: LibraryBin, sized: bool) -> list[RenderableType]:
    symbol = library_bin.symbol.symbol
    offset = "n/a" if library_bin.file_offset is None else f"{library_bin.file_offset:#x}"
    nbytes = "n/a" if library_bin.nbytes is None else str(library_bin.nbytes)
    line = Text("System-lib blob " if library_bin.prefix else "Blob ", style="bold")
    prefix = f"prefix {_cut(library_bin.prefix)}, " if library_bin.prefix else ""
    line.append(
        f"{_cut(symbol.file_name)} ({prefix}{library_bin.layout}) in {_cut(str(symbol.section))}"
        f" at {symbol.address:#x}, "
        f"file offset {offset}, symbol size {_size(symbol.size, sized)}, nbytes {nbytes}"
    )
    parts: list[RenderableType] = [line]
    if library_bin.modules:
        parts.append(_modules_table(library_bin.modules))
        parts.append(_tree_part(library_bin.modules, library_bin.findings))
    if library_bin.findings:
        parts.append(_findings_table(library_bin.findings))
    return parts


def _cubins_table(cubins: Sequence[EmbeddedCubin]) -> Table:
    """The embedded cubins: name, size from the symbol pair, and the decoder's summary."""
    table = _table(f"Embedded cubins ({len(cubins)})", ("name", "size", "details"), len(cubins))
    for cubin in cubins[:ROWS_SHOWN]:
        details = cubin.details
        table.add_row(
            shown(cubin.name),
            str(cubin.size),
            "-" if details is None else shown(details.summary()),
        )
    return table


def _modules_table(modules: Sequence[ModuleInfo]) -> Table:
    """The modules, with a details column (each decoded payload's summary line) when any
    shown module has one: a blob of opaque payloads prints as before."""
    rows = modules[:ROWS_SHOWN]
    decoded = any(m.details is not None for m in rows)
    columns = ("index", "kind", "size", "sha256", "imports") + (("details",) if decoded else ())
    table = _table(f"Modules ({len(modules)})", columns, len(modules))
    for m in rows:
        cells: list[RenderableType] = [
            str(m.index),
            shown(m.kind),
            "-" if m.size is None else str(m.size),
            "-" if m.sha256 is None else m.sha256[:16],
            _imports_cell(m.imports),
        ]
        if decoded:
            cells.append("-" if m.details is None else shown(m.details.summary()))
        table.add_row(*cells)
    return table


def _table(title: str, columns: Sequence[str], count: int) -> Table:
    """A table of `count` items, of which the first ROWS_SHOWN are added; says what it left out."""
    caption = None
    if count > ROWS_SHOWN:
        caption = f"{count - ROWS_SHOWN} more not shown; --json lists them all"
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _imports_cell(imports: Sequence[int]) -> str:
    """A module's imports, the first IMPORTS_SHOWN of them."""
    cell = ", ".join(map(str, imports[:IMPORTS_SHOWN])) or "-"
    if len(imports) > IMPORTS_SHOWN:
        cell += f" (+{len(imports) - IMPORTS_SHOWN} more)"
    return cell


TREE_DEPTH = 16
"""Levels of the text import tree: each costs four columns of guide line, and a 100k-deep
chain would print gigabytes of them."""


def import_tree(modules: Sequence[ModuleInfo], max_depth: int = TREE_DEPTH) -> Tree:
    """The import tree from module 0; shared modules expand once, cycles are shown, not followed.

    Time and output stay linear in modules plus imports: every module expands at most once,
    the path is tracked in a flag per module rather than a copied tuple per node, and the tree
    stops at `max_depth` levels and ROWS_SHOWN lines; its last line says how many modules
    that left out.
    """
    builder = _TreeBuilder(modules, max_depth)
    if modules:
        builder.add(builder.tree, 0)
    from_root = reachable_from([m.imports for m in modules])
    for index in range(len(modules)):
        if builder.budget <= 0:
            break
        if not builder.expanded[index] and index not in from_root:
            builder.add(builder.tree.add(Text("unreachable from the root", style="yellow")), index)
    left_out = builder.expanded.count(False)
    if left_out:
        builder.tree.add(
            Text(
                f"{left_out} module(s) not expanded: the text tree stops at depth {max_depth}"
                f" and {ROWS_SHOWN} lines; --json lists every import",
                style="yellow",
            )
        )
    return builder.tree


class _TreeBuilder:
    """The state of one `import_tree`: which modules expanded, which are on the current path,
    and how many lines are left of ROWS_SHOWN."""

    def __init__(self, modules: Sequence[ModuleInfo], max_depth: int) -> None:
        self.modules = modules
        self.max_depth = max_depth
        self.parents = [0] * len(modules)
        for m in modules:
            for child in set(m.imports):
                self.parents[child] += 1
        self.expanded = [False] * len(modules)
        self.on_path = [False] * len(modules)
        self.tree = Tree(Text("Import tree", style="bold"))
        self.budget = ROWS_SHOWN

    def label(self, index: int, note: str) -> Text:
        module = self.modules[index]
        text = Text(f"[{index}] ")
        text.append(shown(module.kind))
        if module.size is not None:
            text.append(f" ({format_size(module.size)})")
        if self.parents[index] > 1:
            text.append(" shared", style="magenta")
        if note:
            text.append(f" {note}", style="dim")
        return text

    def add(self, node: Tree, index: int) -> None:
        """Module `index` under `node`, and what it imports, depth first, within the budget."""
        modules, on_path, expanded = self.modules, self.on_path, self.expanded
        # (parent node, module, depth, leaving): leaving entries take a module off the path.
        stack = [(node, index, 0, False)]
        while stack and self.budget > 0:
            parent, current, depth, leaving = stack.pop()
            if leaving:
                on_path[current] = False
                continue
            self.budget -= 1
            if on_path[current]:
                parent.add(self.label(current, "(cycle: back to an ancestor, not followed)"))
            elif expanded[current]:
                note = "(expanded above)" if modules[current].imports else ""
                parent.add(self.label(current, note))
            elif depth >= self.max_depth and modules[current].imports:
                note = f"(imports not shown past depth {self.max_depth})"
                parent.add(self.label(current, note))
            else:
                expanded[current] = on_path[current] = True
                branch = parent.add(self.label(current, ""))
                stack.append((branch, current, depth, True))
                children = reversed(modules[current].imports)
                stack.extend((branch, child, depth + 1, False) for child in children)


def _findings_table(findings: Sequence[Finding]) -> Table:
    table = _table(
        f"Findings ({len(findings)})", ("severity", "code", "offset", "message"), len(findings)
    )
    for f in findings[:ROWS_SHOWN]:
        table.add_row(
            Text(f.severity.value, style=_SEVERITY_STYLE[f.severity]),
            f.code,
            "-" if f.offset is None else str(f.offset),
            shown(f.message),
        )
    return table


def _tree_part(modules: Sequence[ModuleInfo], findings: Sequence[Finding]) -> Tree | Text:
    """The import tree, unless the codec declined to expand it (B209)."""
    if any(f.code == "B209" for f in findings):
        return Text("Import tree not expanded (B209)", style="yellow")
    return import_tree(modules)


def shown(text: str, style: str = "") -> Text:
    """A string that came from an input, for the terminal: plain text, never rich markup, with
    control, bidi and other non-printable characters escaped (`\\x1b`, `\\u202e`, a byte that
    is not UTF-8 as `\\xff`), and at most CELL_CHARS characters.

    Every such string goes through here (tables, trees, headings); errors and warnings go
    through `findings.printable`, which this wraps.
    """
    return Text(_cut(text), style=style)


def _cut(text: str) -> str:
    """An input's string as one cell shows it: escaped, at most CELL_CHARS characters."""
    return printable(text, CELL_CHARS)


def _size(size: int, sized: bool) -> str:
    """A symbol's size; `-` where the format records none (Mach-O, PE), as for `_lib`."""
    return str(size) if sized else "-"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
