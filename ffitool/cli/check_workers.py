"""How `check` reads and checks its targets: in this process, or spread over forked worker
processes, with each target's results handed back in the order the targets were given."""

from __future__ import annotations

import collections
import os
import signal
import sys
from collections.abc import Generator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ffitool.checks import Reported, Requirements, check_file
from ffitool.errors import FfitoolError
from ffitool.targets import Inspected, Skipped, Source, Unreadable, iter_sources, read_source

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

_PARALLEL_FROM = 8
"""Fewer targets than this are checked in this process: a worker costs more than they do."""

Item = Source | Unreadable | Skipped
Checked = tuple[str, list[Reported] | str | Skipped]
"""A target's name and its findings, its one-line error, or why it was skipped."""


def checked_sources(
    paths: Sequence[Path], requirements: Requirements, jobs: int
) -> Generator[tuple[int, list[Checked]], None, None]:
    """Per source found, in order: the index of the given path it came from, and its results
    (none for a wheel without libraries found in a directory).

    Directories are walked first (the walk only sniffs each file's first bytes); the files
    and wheels found are what takes time to read. With more than one job they are spread
    over forked worker processes, and the results handed back in order, so every format
    prints the same bytes whatever the number of workers.
    """
    items = [(origin, item) for origin, path in enumerate(paths) for item in iter_sources([path])]
    workers = min(jobs or min(os.cpu_count() or 1, 8), len(items))
    every: Generator[list[Checked], None, None]
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

    def results(self, items: list[Item]) -> Generator[list[Checked], None, None]:
        """Each item's results, in the order of `items`."""
        from multiprocessing.connection import wait

        waiting = collections.deque(enumerate(items))
        done: dict[int, list[Checked]] = {}
        following = 0
        try:
            while following < len(items):
                while waiting and len(self.running) < self.count:
                    self._hand(self._start(), waiting)
                for connection in wait(list(self.running)):  # some of the ones it is given
                    self._receive(self.running[cast("Connection", connection)], waiting, done)
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
