"""Hostile inputs to `ffitool check` through the real command line: settings that overflow or
nest without end, worker processes that die, names that try to reach a terminal, deep trees,
wheels whose records lie. Each must end in one line naming the input and a documented exit
code, never a traceback, a hang or a signal."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, ffitool, require_tool, run_measured

LIB = FIXTURES / "libffi_c.so"
MISSING = ("--require-function", "zz_missing")
"""A requirement every fixture misses: one R101 finding per file, to see how names print."""


def check(*args: str | Path, **options) -> subprocess.CompletedProcess[str]:
    return ffitool("check", *map(str, args), **options)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, start: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), result.stderr


# --- sizes and settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["9" * 400, "9" * 5000 + "KiB", "1" + "0" * 400 + ".5TiB"], ids=["400", "5000", "point"]
)
def test_a_size_too_large_for_a_float_is_a_usage_error(text):
    result = check(LIB, "--max-blob-size", text)
    one_line_error(result, 2, f"ffitool: error: command line: '{text}' is too large a size")


@pytest.mark.parametrize("text", ["1e9999GiB", "nanMiB", "infGiB", "-5", "", "0x10"])
def test_sizes_that_are_not_numbers_are_usage_errors(text):
    result = check(LIB, "--max-blob-size", text)
    one_line_error(result, 2, f"ffitool: error: command line: {text!r} is not a size")


def write_config(folder: Path, text: str | bytes) -> Path:
    path = folder / "pyproject.toml"
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1e400", 'max-blob-size must be a size such as "64MiB"'),
        ("nan", 'max-blob-size must be a size such as "64MiB"'),
        ("-5", "a size cannot be negative"),
        ('"1e9999GiB"', "'1e9999GiB' is not a size"),
        ('"nanMiB"', "'nanMiB' is not a size"),
        ('"infGiB"', "'infGiB' is not a size"),
        (f'"{"9" * 400}MiB"', f"'{'9' * 400}MiB' is too large a size"),
        # tomllib turns this into int(), which refuses 4300 digits with a ValueError
        ("9" * 5000, "not valid TOML: Exceeds the limit (4300 digits)"),
    ],
    ids=["float", "nan", "negative", "exponent", "nan-unit", "inf-unit", "huge", "digits"],
)
def test_hostile_sizes_in_pyproject_are_usage_errors(tmp_path, value, message):
    config = write_config(tmp_path, f"[tool.ffitool.check]\nmax-blob-size = {value}\n")
    result = check(LIB, cwd=tmp_path)
    one_line_error(result, 2, f"ffitool: error: {config}: {message}")


@pytest.mark.parametrize(
    "text",
    ["x = " + "[" * 100_000 + "]" * 100_000, "x = " + "{a=" * 5000 + "}" * 5000],
    ids=["arrays", "inline-tables"],
)
def test_a_pyproject_nested_beyond_the_stack_is_a_usage_error(tmp_path, text):
    config = write_config(tmp_path, text)
    result = check(LIB, "--config", config)
    one_line_error(result, 2, f"ffitool: error: {config}: not valid TOML: nested too deeply")


@pytest.mark.slow
def test_pyproject_over_1mib_non_utf8_or_with_escapes_is_one_line(tmp_path):
    config = write_config(tmp_path, "# " + "x" * (1 << 20) + "\n")
    error = f"ffitool: error: {config}: "
    one_line_error(check(LIB, cwd=tmp_path), 3, f"{error}1048579 bytes is too large")
    write_config(tmp_path, b"[tool.ffitool.check]\n\xff = 1\n")
    one_line_error(check(LIB, cwd=tmp_path), 2, f"{error}not valid TOML: 'utf-8'")
    write_config(tmp_path, '[tool.ffitool.check]\n"\\u001b[2J\\u202e" = 1\n')
    result = check(LIB, cwd=tmp_path)
    one_line_error(result, 2, f"ffitool: error: {config}: unknown key '\\x1b[2J\\u202e'")


def test_discovery_passes_over_a_fifo_a_device_link_and_a_link_loop(tmp_path):
    """`is_file()` follows links: /dev/zero and a FIFO are not files, so nothing is opened."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    for folder, make in [
        (tmp_path, lambda p: os.mkfifo(p)),
        (tmp_path / "a", lambda p: p.symlink_to("/dev/zero")),
        (work, lambda p: p.symlink_to(p)),
    ]:
        make(folder / "pyproject.toml")
    result = check(LIB, cwd=work, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing", "escapes"])
def test_config_that_is_not_a_file(tmp_path, kind):
    path = {
        "directory": tmp_path,
        "fifo": tmp_path / "fifo",
        "missing": tmp_path / "missing.toml",
        "escapes": tmp_path / "a\x1b[31m\nb",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    shown = str(path).replace("\x1b", "\\x1b").replace("\n", "\\n")
    result = check(LIB, "--config", path, timeout=30)
    one_line_error(result, 3, f"ffitool: error: {shown}: ")


def test_explain_an_escape_sequence_is_escaped():
    result = check("--explain", "X\x1b[2J\u202e")
    one_line_error(result, 2, "ffitool: error: --explain 'X\\x1b[2J\\u202e': no rule has this code")


# --- workers -------------------------------------------------------------------------------

# Runs `ffitool ARGS...` (argv[2:]) with the check of l5.so failing as argv[1] says, in
# whichever process checks it: what a bug, the kernel or an exit() in a library does to one
# file. `-j 1` and `-j 2` must report it the same way.
_FAILING = """
import os, pickle, signal, sys
import ffitool.cli.check_workers as checking
from ffitool.cli.main import main

how = sys.argv[1]
read_and_check = checking._read_and_check

class Unpicklable:
    def __init__(self, error):
        self.error = error
    def __reduce__(self):
        raise self.error

def failing(source, requirements):
    if source.path.endswith("l5.so"):
        if how.startswith("signal"):  # the OOM killer sends 9
            os.kill(os.getpid(), int(how.split(":")[1]))
        if how == "exit":
            os._exit(7)
        if how == "bug":
            raise ValueError("x" * 250)
        if how == "results-memory":  # results too large to pickle
            return [(source.path, [Unpicklable(MemoryError())])]
        if how == "results-bug":
            return [(source.path, [Unpicklable(pickle.PicklingError("no"))])]
    return read_and_check(source, requirements)

def no_fork(process_obj):  # fork(2) refused: EAGAIN, as under RLIMIT_NPROC
    raise BlockingIOError(11, os.strerror(11))

checking._read_and_check = failing
if how == "fork":
    import multiprocessing.context
    multiprocessing.context.ForkProcess._Popen = staticmethod(no_fork)
sys.argv = ["ffitool", *sys.argv[2:]]
main()
"""


def copies(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        shutil.copy(LIB, folder / f"l{index}.so")
    return folder


_BUG = (
    "internal error while checking it (a bug in ffitool): ValueError: "
    + "x" * 200
    + "... (50 more characters)"
)
_NO_WORKER = "; --jobs 1 checks in this process"


@pytest.mark.parametrize(
    ("how", "jobs", "message"),
    [
        ("bug", "1", _BUG),
        ("bug", "2", _BUG),
        ("signal:9", "2", "the worker process checking it was killed by SIGKILL (out of memory?)"),
        ("signal:15", "2", "the worker process checking it was killed by SIGTERM"),
        ("signal:40", "2", "the worker process checking it was killed by signal 40"),
        ("exit", "2", "the worker process checking it exited with code 7"),
        ("results-memory", "2", "out of memory while checking it"),
        (
            "results-bug",
            "2",
            "internal error while checking it (a bug in ffitool): PicklingError: no",
        ),
    ],
)
@pytest.mark.slow
def test_a_failing_target_is_one_error_line_and_exit_3(tmp_path, how, jobs, message):
    """Any failure while checking one file, in this process or a worker, is one line for
    that file; the others are still checked."""
    tree = copies(tmp_path / "tree", 10)
    result = subprocess.run(
        [sys.executable, "-c", _FAILING, how, "check", "-j", jobs, str(tree)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert (result.returncode, result.stdout) == (
        3,
        "9 files checked: 0 errors, 0 warnings, 0 info, 1 unreadable; failed\n",
    )
    if "worker" in message:
        message += _NO_WORKER
    assert result.stderr == f"ffitool: error: {tree}/l5.so: {message}\n"


@pytest.mark.slow
def test_more_jobs_than_files(tmp_path):
    tree = copies(tmp_path / "tree", 10)
    code, cpu, megabytes = run_measured(
        [sys.executable, "-m", "ffitool", "check", "-j", "64", str(tree)], tmp_path
    )
    assert code == 0
    summary = (tmp_path / "stdout").read_text().splitlines()[-1]
    assert summary == "10 files checked: 0 errors, 0 warnings, 0 info; passed"
    assert cpu < 30 and megabytes < 200


@pytest.mark.parametrize(
    ("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)]
)
@pytest.mark.slow
def test_an_interrupted_parallel_run_ends_quietly_and_leaves_no_workers(tmp_path, number, code):
    tree = copies(tmp_path / "tree", 1500)  # about 3 s with two workers

    def session() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test runner may ignore it

    process = subprocess.Popen(
        [sys.executable, "-m", "ffitool", "check", "-j", "2", str(tree)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=session,
    )
    workers: list[str] = []
    for _ in range(100):  # until the pool has started
        found = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True)
        workers = found.stdout.split()
        if len(workers) == 2:
            break
        subprocess.run(["sleep", "0.05"], check=True)
    assert len(workers) == 2
    os.killpg(process.pid, number)  # as ^C in a terminal, or a CI runner: the whole group
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, b"Traceback" in err) == (code, b"", False), err.decode()
    assert len(err.splitlines()) <= 1
    assert not [w for w in workers if running(w)]


def running(pid: str) -> bool:
    """Whether a process is there and not a zombie; one just killed gets a moment to die."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in "ZX":
            return False
        subprocess.run(["sleep", "0.1"], check=True)
    print(pid, state, Path(f"/proc/{pid}/cmdline").read_bytes())
    return True


def test_a_worker_that_cannot_be_started_is_one_line_exit_3(tmp_path):
    """fork(2) refusing (RLIMIT_NPROC, no memory) ends the run: nothing was checked."""
    tree = copies(tmp_path / "tree", 10)
    result = subprocess.run(
        [sys.executable, "-c", _FAILING, "fork", "check", "-j", "2", str(tree)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        3,
        "",
        "ffitool: error: cannot start a worker process: Resource temporarily unavailable"
        f"{_NO_WORKER}\n",
    )


def many_functions(folder: Path, count: int = 100_000) -> Path:
    """A library of `count` FFI functions (9 MB for 100,000): checking it takes CPU time and
    memory in proportion (seconds, about 100 MB), so a worker is busy with it long enough to
    be seen."""
    gcc = require_tool("gcc")
    source = folder / "many.s"
    with open(source, "w") as out:
        out.write(".text\n")
        for i in range(count):
            out.write(
                f".globl __tvm_ffi_f{i}\n.type __tvm_ffi_f{i},@function\n__tvm_ffi_f{i}: ret\n"
            )
    library = folder / "z_many.so"
    subprocess.run([gcc, "-shared", "-nostdlib", "-o", library, source], check=True)
    source.unlink()
    return library


@pytest.fixture(scope="module")
def busy_tree(tmp_path_factory) -> Path:
    """Nine small libraries, then (last in order) the big one."""
    tree = copies(tmp_path_factory.mktemp("busy") / "tree", 9)
    many_functions(tree)
    return tree


def start_check(tree: Path) -> subprocess.Popen[bytes]:
    """`ffitool check -j 2 TREE` in a session of its own, as a terminal or CI runner starts it."""

    def session() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test runner may ignore it

    return subprocess.Popen(
        [sys.executable, "-m", "ffitool", "check", "-j", "2", str(tree)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=session,
    )


def children(parent: int) -> list[int]:
    try:
        return [
            int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        ]
    except FileNotFoundError:
        return []


def worker_with(parent: int, path: Path) -> int:
    """The worker of `parent` that has `path` open: it is checking that file right now."""
    for _ in range(3000):  # a hang guard of a minute: the workers get there within seconds
        for pid in children(parent):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
                if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in fds):
                    return pid
            except FileNotFoundError:
                continue  # the fd or the process went away meanwhile
        time.sleep(0.02)
    raise AssertionError(f"no worker of {parent} opened {path}")


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr; a run still there after the hang guard is killed."""
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its workers die with it (PR_SET_PDEATHSIG)
        process.communicate()
        raise
    return process.returncode, out.decode(), err.decode()


BUSY_SUMMARY = "9 files checked: 0 errors, 0 warnings, 0 info, 1 unreadable; failed"


@pytest.mark.slow
def test_a_worker_out_of_memory_is_one_line_for_its_file(busy_tree):
    """The worker checking the big library may only grow 8 MiB more (RLIMIT_AS, set while
    it is stopped), a fraction of what the file needs: the MemoryError is that file's error
    line; the others are checked."""
    process = start_check(busy_tree)
    worker = worker_with(process.pid, busy_tree / "z_many.so")
    os.kill(worker, signal.SIGSTOP)
    try:
        status = Path(f"/proc/{worker}/status").read_text()
        size = int(re.search(r"^VmSize:\s+(\d+) kB$", status, re.M)[1]) << 10
        resource.prlimit(worker, resource.RLIMIT_AS, (size + (8 << 20), size + (8 << 20)))
    finally:
        os.kill(worker, signal.SIGCONT)
    code, out, err = finish(process)
    assert (code, err) == (
        3,
        f"ffitool: error: {busy_tree}/z_many.so: out of memory while checking it\n",
    )
    assert out.splitlines()[-1] == BUSY_SUMMARY


@pytest.mark.slow
def test_a_worker_killed_from_outside_is_one_line_for_its_file(busy_tree):
    process = start_check(busy_tree)
    worker = worker_with(process.pid, busy_tree / "z_many.so")
    os.kill(worker, signal.SIGKILL)  # what the OOM killer does
    code, out, err = finish(process)
    assert (code, err) == (
        3,
        f"ffitool: error: {busy_tree}/z_many.so: the worker process checking it was killed by"
        " SIGKILL (out of memory?); --jobs 1 checks in this process\n",
    )
    assert out.splitlines()[-1] == BUSY_SUMMARY


def waiting_for_work(pid: int) -> bool:
    """Whether a worker is blocked reading its pipe to the parent (a socket): it holds no file.
    /proc/PID/syscall names the blocking call's first argument, the descriptor."""
    try:
        call = Path(f"/proc/{pid}/syscall").read_text().split()
        return len(call) > 1 and os.readlink(f"/proc/{pid}/fd/{int(call[1], 16)}").startswith(
            "socket:"
        )
    except (FileNotFoundError, ValueError):
        return False


@pytest.mark.slow
def test_a_worker_killed_while_it_holds_no_file_loses_nothing(tmp_path):
    """The big library is the last file: once a worker has it, the other has nothing left
    to do. Killed then, it takes no file with it: every file is checked, exit 0. (A smaller
    big library than the other tests': this run goes to the end.)"""
    tree = copies(tmp_path / "tree", 9)
    big = many_functions(tree, 20_000)
    process = start_check(tree)
    busy = worker_with(process.pid, big)
    (idle,) = [pid for pid in children(process.pid) if pid != busy]
    for _ in range(3000):  # a hang guard of a minute
        if waiting_for_work(idle):
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"worker {idle} never waited for work")
    os.kill(idle, signal.SIGKILL)
    assert finish(process) == (
        0,
        "10 files checked: 0 errors, 0 warnings, 0 info; passed\n",
        "",
    )


@pytest.mark.parametrize(
    ("number", "code", "stop"),
    [
        (signal.SIGINT, 130, True),
        (signal.SIGTERM, 143, True),
        (signal.SIGHUP, 129, True),
        (signal.SIGTERM, 143, False),
    ],
    ids=["int-stopped", "term-stopped", "hup-stopped", "term-busy"],
)
def test_an_interrupt_ends_the_run_whatever_the_workers_do(busy_tree, number, code, stop):
    """^C (or a kill of the whole group) while a worker checks the big library, even one
    that is stopped: the run ends at once, quietly, and its workers are gone. A run that
    waited for a stopped worker would never end (the hang guard fails it)."""
    process = start_check(busy_tree)
    worker_with(process.pid, busy_tree / "z_many.so")
    workers = children(process.pid)
    assert len(workers) == 2
    if stop:
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)
    os.killpg(process.pid, number)
    assert finish(process) == (code, "", "")
    assert not [w for w in workers if running(str(w))]


# --- directories ---------------------------------------------------------------------------

HOSTILE_NAMES = ["a\nb.so", "\x1b[31mred.so", "\u202egnp.so", "c,d:e%0A.so"]


def hostile_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "n"
    tree.mkdir()
    for name in HOSTILE_NAMES:
        shutil.copy(LIB, tree / name)
    return tree


@pytest.mark.slow
def test_hostile_file_names_in_every_format(tmp_path):
    tree = hostile_tree(tmp_path)
    paths = sorted(str(tree / name) for name in HOSTILE_NAMES)

    text = check(*MISSING, tree)
    assert text.returncode == 1
    headings = [line for line in text.stdout.splitlines() if not line.startswith("  ")][:-1]
    assert headings == [
        f"{tree}/\\x1b[31mred.so",
        f"{tree}/a\\nb.so",
        f"{tree}/c,d:e%0A.so",
        f"{tree}/\\u202egnp.so",
    ]
    assert "\x1b" not in text.stdout and "\u202e" not in text.stdout

    document = json.loads(check(*MISSING, "--format", "json", tree).stdout)
    assert [entry["path"] for entry in document["files"]] == paths

    sarif = json.loads(check(*MISSING, "--format", "sarif", tree).stdout)
    uris = [
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in sarif["runs"][0]["results"]
    ]
    assert uris == [
        f"file://{tree}/%1B%5B31mred.so",
        f"file://{tree}/a%0Ab.so",
        f"file://{tree}/c%2Cd%3Ae%250A.so",
        f"file://{tree}/%E2%80%AEgnp.so",
    ]

    github = check(*MISSING, "--format", "github", tree).stdout.splitlines()
    assert [line.split(",title=")[0] for line in github] == [
        f"::error file={tree}/\\x1b[31mred.so",
        f"::error file={tree}/a\\nb.so",
        f"::error file={tree}/c%2Cd%3Ae%250A.so",
        f"::error file={tree}/\\u202egnp.so",
    ]


@pytest.mark.slow
def test_2000_levels_of_directories_are_walked(tmp_path):
    """The walk keeps its own stack: depth costs one listing per level, not a Python frame."""
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        for _ in range(100):  # 20 levels at a time, so no one path passes PATH_MAX
            os.makedirs("/".join(["d"] * 20))
            os.chdir("/".join(["d"] * 20))
        shutil.copy(LIB, "x.so")
    finally:
        os.chdir(here)
    try:
        code, cpu, megabytes = run_measured(
            [sys.executable, "-m", "ffitool", "check", "--format=json", *MISSING, f"{tmp_path}/d"],
            tmp_path,
        )
    finally:  # rm, not pytest: Python 3.11's rmtree recurses, and 2000 levels overflow it
        subprocess.run(["rm", "-rf", str(tmp_path / "d")], check=True)
    files = json.loads((tmp_path / "stdout").read_text())["files"]
    assert (code, [f["path"] for f in files]) == (1, [f"{tmp_path}/" + "d/" * 2000 + "x.so"])
    assert cpu < 30 and megabytes < 200


def test_a_directory_past_path_max_is_one_line_exit_3_and_the_rest_is_checked(tmp_path):
    """Levels of 250-character names are made through descriptors; the walk reaches one
    whose path passes PATH_MAX, which cannot be listed by name: one line for it."""
    tree = copies(tmp_path / "tree", 1)
    name = "n" * 250
    path, fd = str(tree), os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(path) < 4096:
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = inner, f"{path}/{name}"
    finally:
        os.close(fd)
    try:
        result = check(tree)
    finally:  # rm, not pytest: rmtree by path fails past PATH_MAX
        subprocess.run(["rm", "-rf", str(tree / name)], check=True)
    assert (result.returncode, result.stdout, result.stderr) == (
        3,
        "1 file checked: 0 errors, 0 warnings, 0 info, 1 unreadable; failed\n",
        f"ffitool: error: {path}: cannot list: File name too long\n",
    )


# --- wheels --------------------------------------------------------------------------------


def wheel(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, method in members:
            archive.writestr(name, data, compress_type=method)
    return path


def patched(source: Path, target: Path, at: str, offset: int, fmt: str, value: int) -> Path:
    """`source` with one field rewritten: `at` is "central", "local" or "end" (record start)."""
    data = bytearray(source.read_bytes())
    base = {
        "central": data.rfind(b"PK\x01\x02"),
        "local": 0,
        "end": data.rfind(b"PK\x05\x06"),
    }[at]
    struct.pack_into(fmt, data, base + offset, value)
    target.write_bytes(data)
    return target


@pytest.mark.parametrize(
    ("at", "offset", "fmt", "value", "message"),
    [
        ("end", 16, "<I", 10**9, "not a readable wheel: central directory of 54 bytes at 10"),
        ("end", 12, "<I", 0xFFFFFF, "not a readable wheel: central directory of 16777215 bytes"),
        ("central", 30, "<H", 0xFFFF, "not a readable wheel: the file ends inside a record"),
        ("central", 42, "<I", 0xFFFFFFFF, "not a readable wheel: zip64 sizes missing"),
        ("central", 20, "<I", 0xFFFFFFFF, "not a readable wheel: zip64 sizes missing"),
        ("central", 24, "<I", 0, "!a/lib.so: lying size: decompresses to more than the 0 bytes"),
        ("central", 20, "<I", 900, "!a/lib.so: compressed data ends early"),
        ("local", 28, "<H", 0xFFFF, "!a/lib.so: data of"),
        ("central", 42, "<I", 1, "!a/lib.so: no local header at offset 1"),
    ],
)
def test_lying_zip_records_are_one_error_each(tmp_path, at, offset, fmt, value, message):
    good = wheel(tmp_path / "good.whl", [("a/lib.so", LIB.read_bytes(), zipfile.ZIP_DEFLATED)])
    bad = patched(good, tmp_path / "bad.whl", at, offset, fmt, value)
    result = check(bad, timeout=30)
    one_line_error(result, 3, f"ffitool: error: {bad}{'' if message[0] == '!' else ': '}{message}")


def test_member_names_with_invalid_utf8_and_escapes(tmp_path):
    raw = wheel(
        tmp_path / "raw.whl",
        [(name, LIB.read_bytes(), zipfile.ZIP_STORED) for name in ("XX.so", "YYYYYYY.so")],
    )  # zipfile cuts a name at NUL and encodes it: the names are put in afterwards
    data = raw.read_bytes().replace(b"XX.so", b"\xff\xfe.so")
    data = bytearray(data.replace(b"YYYYYYY.so", b"a\x00\x1b[2Jb.so"))
    at = data.rfind(b"PK\x01\x02")
    at = data.rfind(b"PK\x01\x02", 0, at)  # the first entry's central record: flag bit 11 on
    struct.pack_into("<H", data, at + 8, struct.unpack_from("<H", data, at + 8)[0] | 0x800)
    raw.write_bytes(data)
    result = check(*MISSING, raw)
    assert result.returncode == 1
    headings = [line for line in result.stdout.splitlines() if line.startswith(str(raw))]
    assert headings == [f"{raw}!\\xff\\xfe.so", f"{raw}!a\\x00\\x1b[2Jb.so"]


@pytest.mark.slow
def test_a_wheel_in_a_wheel_is_not_opened_and_an_ar_member_is_read(tmp_path):
    inner = wheel(tmp_path / "inner.whl", [("lib.so", LIB.read_bytes(), zipfile.ZIP_STORED)])
    outer = wheel(tmp_path / "outer.whl", [("inner.whl", inner.read_bytes(), zipfile.ZIP_STORED)])
    result = check(outer)
    assert (result.returncode, result.stderr) == (
        0,
        f"ffitool: note: {outer}: skipped: no ELF, Mach-O or PE file or ar archive in it\n",
    )
    member = LIB.read_bytes()[:200]  # an ELF header whose section headers are missing
    ar = b"!<arch>\n" + b"bad.o/          0           0     0     644     %-10d`\n" % len(member)
    archive = wheel(tmp_path / "ar.whl", [("libx.a", ar + member, zipfile.ZIP_DEFLATED)])
    one_line_error(check(archive), 3, f"ffitool: error: {archive}!libx.a(bad.o): malformed ELF")


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_whl_that_is_not_a_file(tmp_path, kind):
    path = tmp_path / "x.whl"
    if kind == "fifo":
        os.mkfifo(path)
        one_line_error(check(path, timeout=30), 3, f"ffitool: error: {path}: not a regular file")
    else:
        path.mkdir()
        result = check(path, timeout=30)
        assert (result.returncode, result.stderr) == (
            0,
            f"ffitool: note: {path}: skipped: no ELF, Mach-O or PE file, ar archive or wheel"
            " in this directory\n",
        )
