"""The `check` command's body: settings, targets, the checks, then one format to print.

Text output goes through rich for colour on a terminal and is never wrapped: a path or a
symbol name stays on one line, so piping it to grep finds it.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ffitool.check_config import CheckSettings
from ffitool.check_report import CheckOutcome, check_document, github_lines, sarif_document
from ffitool.checks import Reported, Requirements, check_file
from ffitool.errors import FfitoolError
from ffitool.findings import Severity, printable
from ffitool.rules import RULES
from ffitool.targets import Inspected, Skipped, Source, Unreadable, iter_sources, read_source

FORMATS = ("text", "json", "sarif", "github")


def run_check(
    paths: Sequence[Path], settings: CheckSettings, output_format: str, jobs: int = 0
) -> int:
    """Check every target, print the outcome in `output_format`; returns the exit code."""
    from ffitool.cli.entry import print_error, print_json, print_note

    outcome = CheckOutcome(settings)
    for path, result in _checked(paths, settings.requirements, jobs):
        if isinstance(result, Skipped):
            outcome.skipped.append((path, result.reason))
            print_note(f"{path}: skipped: {result.reason}")
        elif isinstance(result, str):
            outcome.unreadable.append((path, result))
        else:
            outcome.add(path, result)
    if output_format == "json":
        print_json(check_document(outcome))
    elif output_format == "sarif":
        print_json(sarif_document(outcome, _version()))
    elif output_format == "github":
        sys.stdout.writelines(f"{line}\n" for line in github_lines(outcome))
    else:
        _print_text(outcome)
    for _, error in outcome.unreadable:
        print_error(error)
    return outcome.exit_code


_PARALLEL_FROM = 8
"""Fewer targets than this are checked in this process: a worker costs more than they do."""


def _checked(paths: Sequence[Path], requirements: Requirements, jobs: int) -> Iterator[Checked]:
    """(name, findings, the one-line error or why it was skipped) per target, in order.

    Directories are walked first (the walk only sniffs each file's first bytes); the files
    and wheels found are what takes time to read. With more than one job they are spread
    over forked worker processes in chunks; `map` hands the results back in order, so every
    format prints the same bytes whatever the number of workers.
    """
    items = list(iter_sources(paths))
    workers = jobs or min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(items) < _PARALLEL_FROM:
        for item in items:
            yield from _check_one(item, requirements)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("fork")
    chunk = max(1, min(64, len(items) // (workers * 4)))
    try:
        with ProcessPoolExecutor(workers, context, _worker_start) as pool:
            # The workers are forked by the first submit, with these signals blocked: none
            # can reach a worker before it has left the process group (see _worker_start).
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
            try:
                every = pool.map(_check_one, items, itertools.repeat(requirements), chunksize=chunk)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            for results in every:
                yield from results
    except BrokenProcessPool:  # a worker was killed: the OOM killer, a kill by hand
        raise FfitoolError(
            "a worker process died (killed by a signal?) while checking;"
            " --jobs 1 checks in this process"
        ) from None


_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process receives when its parent dies (Linux)."""


def _worker_start() -> None:
    """Leave signals to the main process, and let the pool end a worker with SIGTERM.

    A worker is forked after `main` turned SIGTERM and SIGHUP into SystemExit. When one
    worker dies, the pool terminates the others with SIGTERM: a SystemExit would leave them
    waiting forever on a queue lock the dead one held, and `check` with them; so SIGTERM
    kills again. And so that ^C or a kill of the process group does not kill workers under
    a pool that is still handing them work (whose thread then fails with a traceback), a
    worker is in a process group of its own: the main process is interrupted, cancels what
    is queued, and the workers end when their current chunk is done. Outside the group, a
    worker would outlive a main process killed with SIGKILL: the kernel kills it then
    (PR_SET_PDEATHSIG), and one whose parent is already gone ends at once.
    """
    import ctypes

    parent = os.getppid()
    os.setpgid(0, 0)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    for number in _STOPPING:  # SIG_IGN drops what was sent to the group before setpgid
        signal.signal(number, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPPING)


Checked = tuple[str, list[Reported] | str | Skipped]


def _check_one(item: Source | Unreadable | Skipped, requirements: Requirements) -> list[Checked]:
    """The results of one source (a wheel has one per member), or a walk's note or error."""
    if isinstance(item, Skipped):
        return [(item.name, item)]
    if isinstance(item, Unreadable):
        return [(item.name, item.message)]
    results: list[Checked] = []
    for target in read_source(item, digests=False):
        if isinstance(target, Inspected):
            results.append((target.file.path, check_file(target.file, requirements)))
        elif isinstance(target, Unreadable):
            results.append((target.name, target.message))
        else:
            results.append((target.name, target))
    return results


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ffitool")
    except PackageNotFoundError:
        return "0+unknown"


_STYLES = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _print_text(outcome: CheckOutcome) -> None:
    """Findings grouped by target, then one summary line; files without findings are counted."""
    from rich.text import Text

    from ffitool.cli.render import output_console

    console = output_console()
    for path, reported in outcome.checked:
        if not reported:
            continue
        console.print(Text(printable(path), style="bold"), soft_wrap=True)
        for item in reported:
            found = item.finding
            line = Text("  ")
            line.append(found.code, style=_STYLES[found.severity])
            line.append(f" {found.severity.value}: ")
            if item.member is not None:
                line.append(f"{printable(item.member)}: ")
            line.append(printable(found.message))
            if item.file_offset is not None:
                line.append(f" (file offset {item.file_offset:#x})")
            console.print(line, soft_wrap=True)
    counts = outcome.counts()
    summary = (
        f"{len(outcome.checked)} {_plural(len(outcome.checked), 'file')} checked:"
        f" {counts['error']} {_plural(counts['error'], 'error')},"
        f" {counts['warning']} {_plural(counts['warning'], 'warning')},"
        f" {counts['info']} info"
    )
    if outcome.unreadable:
        summary += f", {len(outcome.unreadable)} unreadable"
    verdict = "failed" if outcome.exit_code else "passed"
    console.print(Text(f"{summary}; {verdict}", style="bold red" if outcome.exit_code else ""))


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"


def print_rules(codes: Iterable[str] = RULES) -> None:
    """`--list-rules`: code, severity and title, one rule a line."""
    for code in codes:
        rule = RULES[code]
        sys.stdout.write(f"{rule.code}  {rule.severity.value:<7}  {rule.title}\n")


def explain(code: str) -> str:
    """`--explain CODE`: the rule's title, severity and explanation."""
    rule = RULES[code]
    return f"{rule.code} ({rule.severity.value}): {rule.title}\n\n{rule.explanation}\n"
