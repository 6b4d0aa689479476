"""The `check` command's body: settings, targets, the checks, then one format to print.

Text output goes through rich for colour on a terminal and is never wrapped: a path or a
symbol name stays on one line, so piping it to grep finds it.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ffitool.check_config import CheckSettings
from ffitool.check_report import CheckOutcome, check_document, github_lines, sarif_document
from ffitool.checks import Reported, Requirements, check_file, nothing_found
from ffitool.errors import FfitoolError
from ffitool.findings import Severity, printable
from ffitool.rules import RULES
from ffitool.targets import Inspected, Skipped, Source, Unreadable, iter_sources, read_source

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

FORMATS = ("text", "json", "sarif", "github")


def run_check(
    paths: Sequence[Path], settings: CheckSettings, output_format: str, jobs: int = 0
) -> int:
    """Check every target, print the outcome in `output_format`; returns the exit code."""
    from ffitool.cli.main import print_error, print_json, print_note

    outcome = CheckOutcome(settings)
    with closing(_checked(paths, settings.requirements, jobs)) as every:
        for origin, sources in itertools.groupby(every, key=lambda checked: checked[0]):
            found = False  # a file under this path was checked, or could not be read
            for path, result in (checked for _, results in sources for checked in results):
                if isinstance(result, Skipped):
                    outcome.skipped.append((path, result.reason))
                    print_note(f"{path}: skipped: {result.reason}")
                elif isinstance(result, str):
                    outcome.unreadable.append((path, result))
                    found = True
                else:
                    outcome.add(path, result)
                    found = True
            given = str(paths[origin])
            if not found and (reported := nothing_found(given, settings.requirements)):
                outcome.add(given, reported)
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

Item = Source | Unreadable | Skipped
Checked = tuple[str, list[Reported] | str | Skipped]
"""A target's name and its findings, its one-line error, or why it was skipped."""


def _checked(
    paths: Sequence[Path], requirements: Requirements, jobs: int
) -> Iterator[tuple[int, list[Checked]]]:
    """Per source found, in order: the index of the given path it came from, and its results
    (none for a wheel without libraries found in a directory).

    Directories are walked first (the walk only sniffs each file's first bytes); the files
    and wheels found are what takes time to read. With more than one job they are spread
    over forked worker processes, and the results handed back in order, so every format
    prints the same bytes whatever the number of workers.
    """
    items = [(origin, item) for origin, path in enumerate(paths) for item in iter_sources([path])]
    workers = min(jobs or min(os.cpu_count() or 1, 8), len(items))
    if workers <= 1 or len(items) < _PARALLEL_FROM:
        every = (_check_one(item, requirements) for _, item in items)
    else:
        every = _Workers(requirements, workers).results([item for _, item in items])
    with closing(every):  # a worker's end: see _Workers
        for (origin, _), results in zip(items, every, strict=True):
            yield origin, results


def _check_one(item: Item, requirements: Requirements) -> list[Checked]:
    """The results of one source (a wheel has one per member), or a walk's note or error.

    Whatever fails while reading or checking a source is one error line for it, here and in
    a worker alike: a MemoryError (a file that needs more than the machine or RLIMIT_AS
    gives), and any other exception, which is a bug in ffitool and says so.
    """
    if isinstance(item, Skipped):
        return [(item.name, item)]
    if isinstance(item, Unreadable):
        return [(item.name, item.message)]
    try:
        return _read_and_check(item, requirements)
    except Exception as exc:  # one line per target, never a traceback
        return [(item.path, f"{item.path}: {_failure(exc)}")]


def _read_and_check(source: Source, requirements: Requirements) -> list[Checked]:
    results: list[Checked] = []
    for target in read_source(source, digests=False):
        if isinstance(target, Inspected):
            results.append((target.file.path, check_file(target.file, requirements)))
        elif isinstance(target, Unreadable):
            results.append((target.name, target.message))
        else:
            results.append((target.name, target))
    return results


_DETAIL_LIMIT = 200
"""Characters of an unexpected exception's message kept in its error line."""


def _failure(exc: Exception) -> str:
    """What went wrong checking a target, for its error line."""
    if isinstance(exc, MemoryError):
        return "out of memory while checking it"
    detail = str(exc)
    if len(detail) > _DETAIL_LIMIT:
        detail = f"{detail[:_DETAIL_LIMIT]}... ({len(detail) - _DETAIL_LIMIT} more characters)"
    return f"internal error while checking it (a bug in ffitool): {type(exc).__name__}: {detail}"


class _Workers:
    """Forked worker processes, each handed one source at a time over its own pipe.

    One source at a time is what lets a failure name its target: a worker that dies (the
    OOM killer, a kill by hand) was checking the one source it holds, which gets the error
    line; the sources still waiting go to a worker started in its place. The parent never
    writes more than one small message to a worker that has not answered, so neither side
    can block the other on a full pipe.

    Whatever ends the run early (^C, SIGTERM, SIGHUP, an exception) kills every worker with
    SIGKILL and reaps it before the parent goes on unwinding: nothing a worker is doing, not
    even being stopped, holds the run up.
    """

    def __init__(self, requirements: Requirements, count: int) -> None:
        import multiprocessing

        self.context = multiprocessing.get_context("fork")
        self.requirements = requirements
        self.count = count
        self.running: dict[Connection, _Worker] = {}

    def results(self, items: list[Item]) -> Iterator[list[Checked]]:
        """Each item's results, in the order of `items`."""
        from multiprocessing.connection import wait

        waiting = collections.deque(enumerate(items))
        done: dict[int, list[Checked]] = {}
        following = 0
        try:
            while following < len(items):
                while waiting and len(self.running) < self.count:
                    self._hand(self._start(), waiting)
                for connection in wait(list(self.running)):
                    self._receive(self.running[connection], waiting, done)
                while following in done:
                    yield done.pop(following)
                    following += 1
            self._stop(gently=True)
        finally:
            self._stop()

    def _start(self) -> _Worker:
        ours, theirs = self.context.Pipe()
        # daemon: should a worker escape _stop (a second ^C during it), multiprocessing's exit
        # handler terminates it rather than waiting forever for it to end.
        process = self.context.Process(
            target=_serve, args=(theirs, self.requirements, os.getpid()), daemon=True
        )
        sys.stdout.flush()  # a forked copy of a buffer would be written twice
        sys.stderr.flush()
        # Forked with these signals blocked: none reaches a worker before _worker_start.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
        try:
            process.start()
            worker = self.running[ours] = _Worker(ours, process)  # _stop kills it from now
        except OSError as exc:
            raise FfitoolError(
                f"cannot start a worker process: {exc.strerror or exc};"
                " --jobs 1 checks in this process"
            ) from None
        finally:
            theirs.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return worker

    def _hand(self, worker: _Worker, waiting: collections.deque[tuple[int, Item]]) -> None:
        """Give `worker` the next item; it holds it until it answers or dies."""
        worker.holding = waiting.popleft()
        # One that died already is seen at its end of file next, which names the item.
        with suppress(OSError):
            worker.connection.send(worker.holding)

    def _receive(
        self,
        worker: _Worker,
        waiting: collections.deque[tuple[int, Item]],
        done: dict[int, list[Checked]],
    ) -> None:
        try:
            index, results = worker.connection.recv()
        except (EOFError, OSError):
            del self.running[worker.connection]
            worker.connection.close()
            worker.process.join()
            if worker.holding is not None:
                index, item = worker.holding
                name = _name(item)
                done[index] = [(name, f"{name}: {_death(worker.process.exitcode)}")]
            return
        done[index] = results
        worker.holding = None
        if waiting:
            self._hand(worker, waiting)

    def _stop(self, gently: bool = False) -> None:
        """End and reap every worker: at the end of the run they are idle and are told to
        exit; before it they are not waited for, but killed (SIGKILL ends a stopped one too)."""
        for worker in self.running.values():
            if not gently:
                worker.process.kill()
                continue
            with suppress(OSError):  # one that died already is reaped below all the same
                worker.connection.send(None)
        for worker in self.running.values():
            worker.process.join()
            worker.connection.close()
        self.running.clear()


@dataclass
class _Worker:
    connection: Connection
    process: BaseProcess
    holding: tuple[int, Item] | None = None
    """The item handed to the worker that it has not answered yet."""


def _name(item: Item) -> str:
    return item.path if isinstance(item, Source) else item.name


def _death(exitcode: int | None) -> str:
    """Why a worker ended without answering, from its exit code (minus a signal number)."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
        if exitcode == -signal.SIGKILL:
            how += " (out of memory?)"
    else:
        how = f"exited with code {exitcode}"
    return f"the worker process checking it {how}; --jobs 1 checks in this process"


def _serve(connection: Connection, requirements: Requirements, parent: int) -> None:
    """A worker's loop: check each item received and send its results back, until the
    parent sends None (or kills it; the kernel does when the parent is gone)."""
    _worker_start(parent)
    while (message := connection.recv()) is not None:
        index, item = message
        try:
            connection.send((index, _check_one(item, requirements)))
        except Exception as exc:  # results that do not pickle: too large for memory, or a bug
            name = _name(item)
            connection.send((index, [(name, f"{name}: {_failure(exc)}")]))


_STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process receives when its parent dies (Linux)."""


def _worker_start(parent: int) -> None:
    """Leave signals to the main process, which kills its workers when it stops.

    A worker is forked after `main` turned SIGTERM and SIGHUP into SystemExit; in a worker
    they kill again (SIG_DFL), and it is in a process group of its own with SIGINT ignored,
    so that ^C or a kill of the process group reaches the main process alone: it kills and
    reaps every worker, whatever they are doing, and exits with its interrupt code. Outside
    the group, a worker would outlive a main process killed with SIGKILL: the kernel kills
    it then (PR_SET_PDEATHSIG), and one whose parent (`parent`, the pid before the fork) is
    already gone ends at once.
    """
    import ctypes

    os.setpgid(0, 0)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    for number in _STOPPING:  # SIG_IGN drops what was sent to the group before setpgid
        signal.signal(number, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPPING)


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
