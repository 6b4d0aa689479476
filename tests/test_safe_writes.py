"""Writes nobody can redirect, and that a signal or a concurrent pack cannot corrupt.

These run as root, as CI and many build machines do: the attacks come from an unprivileged
process (uid `nobody`) forked from the test, which shares the directory the output goes to.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, require

from ffitool.library import inspect_path

NOBODY = 65534


def ffitool(*args: str, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "ffitool", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture
def shared_dir():
    """A directory anyone may write to, like a shared build or upload area (pytest's own
    temporary directories are private to root, so `nobody` could not reach one inside)."""
    require(os.geteuid() == 0, "these attacks need root to run the victim and `nobody` as attacker")
    directory = Path(tempfile.mkdtemp(prefix="ffitool-shared-", dir="/tmp"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory)


def drop_to_nobody() -> None:
    """Become uid and gid nobody, with none of root's supplementary groups."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def cli_as_nobody(*args: str) -> tuple[int, str, str]:
    """`ffitool ARGS` as `nobody`: exit code, stdout, stderr. `nobody` cannot start root's
    Python, so this is a forked child of the test, running the command line's entry point:
    every module the command needs must already be imported (run it once as root first)."""
    from ffitool.cli.main import run_app

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                drop_to_nobody()
                sys.stdout, sys.stderr, sys.argv = out, err, ["ffitool", *args]
                code = run_app()
            except BaseException as exc:
                err.write(f"as nobody: {exc!r}\n")
            finally:
                out.flush()
                err.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read(), err.read()


def as_nobody(work) -> int:
    """Run `work()` in a forked child that has dropped to uid/gid nobody; returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            drop_to_nobody()
            work()
            code = 0
        except BaseException as exc:  # shown in the test's captured stderr
            sys.stderr.write(f"as nobody: {exc!r}\n")
        finally:
            os._exit(code)
    return pid


def as_nobody_now(work) -> None:
    """Run `work()` as `nobody` to completion: the attack happens at this very point."""
    _, status = os.waitpid(as_nobody(work), 0)
    assert os.waitstatus_to_exitcode(status) == 0  # the attack could reach the directory


def swap_names(shared: Path, secret: Path, keep: str) -> None:
    """Every entry of `shared` but `keep` that is not the attacker's is renamed away: a file
    gives way to a symlink to `secret`, a directory to the attacker's own, holding such a
    symlink under the name `keep`."""
    for entry in os.listdir(shared):
        path = shared / entry
        info = os.lstat(path)
        if entry == keep or info.st_uid == NOBODY or entry.endswith(".moved"):
            continue
        os.rename(path, shared / f"{entry}.moved")
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(path)
            os.symlink(secret, path / keep)
        else:
            os.symlink(secret, path)


def swap_inside(shared: Path, secret: Path) -> None:
    """Every entry of every directory in `shared` the attacker may write to becomes a
    symlink to `secret`."""
    for entry in os.listdir(shared):
        path = shared / entry
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and (info.st_uid == NOBODY or info.st_mode & 0o002):
            for inner in os.listdir(path):
                os.unlink(path / inner)
                os.symlink(secret, path / inner)


class Hooked:
    """`ffitool.staging`'s view of `os`, with `work` run right before or after some calls:
    the points between which an attacker may act, reproduced without racing anything."""

    def __init__(self, **work) -> None:
        self._work = work  # e.g. after_link=..., before_rename=...

    def __getattr__(self, name: str):
        real = getattr(os, name)
        before, after = self._work.get(f"before_{name}"), self._work.get(f"after_{name}")
        if before is None and after is None:
            return real

        def hooked(*args, **kwargs):
            if before is not None:
                before()
            result = real(*args, **kwargs)
            if after is not None:
                after()
            return result

        return hooked


@pytest.fixture(params=["O_TMPFILE", "named"])
def staging_mode(request, monkeypatch):
    """Both ways a file is staged: unnamed until published, or named from the start (where
    the system has no O_TMPFILE)."""
    if request.param == "named":
        import ffitool.staging

        monkeypatch.setattr(ffitool.staging, "_O_TMPFILE", 0)
    return request.param


@pytest.fixture
def victim(shared_dir, tmp_path):
    """A library in the shared directory, a payload, and a root-only secret."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only\n")
    secret.chmod(0o600)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"payload")
    lib = shared_dir / "lib.so"
    shutil.copyfile(FIXTURES / "libffi_cpp.so", lib)
    return lib, payload, secret


def _attacked_pack(monkeypatch, lib: Path, payload: Path, **work) -> None:
    """Pack `lib` in place, in process, with `work` hooked into the staging."""
    import ffitool.staging
    from ffitool.pack import pack_library

    plan = _plan(lib, payload)
    monkeypatch.setattr(ffitool.staging, "os", Hooked(**work))
    pack_library(lib, plan)


@pytest.mark.parametrize("moment", ["after_link", "before_rename"])
def test_swapping_staged_names_for_symlinks_redirects_nothing(
    victim, staging_mode, monkeypatch, moment
):
    """`nobody` replaces every name ffitool has in the shared directory (a temporary file, a
    directory) with a symlink to a root-only file, or a directory of its own holding one,
    after the new file is named and again right before the rename: the library must end up
    packed and a regular file, the secret untouched."""
    lib, payload, secret = victim
    shared = lib.parent

    def attack() -> None:
        as_nobody_now(lambda: (swap_inside(shared, secret), swap_names(shared, secret, "lib.so")))

    _attacked_pack(monkeypatch, lib, payload, **{moment: attack, "before_rename": attack})
    assert secret.read_bytes() == b"root only\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not lib.is_symlink() and lib.is_file()
    (library,) = inspect_path(lib).libraries
    assert [m.kind for m in library.library_bin.modules][-1] == "test_beta"
    for entry in os.listdir(shared):  # the attacker's things, and ours they moved (empty)
        path = shared / entry
        assert entry == "lib.so" or path.lstat().st_uid == NOBODY or not any(path.iterdir())


@pytest.mark.parametrize("planted", ["the attacker's", "world-writable", "a symlink"])
def test_a_directory_swapped_for_the_private_one_is_refused(
    victim, staging_mode, monkeypatch, planted
):
    """Right after ffitool creates its private directory, `nobody` renames it away and puts
    another in its place: one of its own, or a root-owned directory anybody may write to
    (an upload area in the shared directory), or a symlink to a directory only root may
    write to, elsewhere. ffitool must not name its file in there."""
    from ffitool.errors import InputError

    lib, payload, secret = victim
    shared = lib.parent
    uploads = shared / "uploads"
    uploads.mkdir()
    uploads.chmod(0o777)
    elsewhere = secret.parent / "private"
    elsewhere.mkdir(mode=0o700)
    before = lib.read_bytes()

    def plant() -> None:
        def work() -> None:
            for entry in os.listdir(shared):
                if entry.endswith(".ffitool"):
                    os.rename(shared / entry, shared / f"{entry}.moved")
                    if planted == "world-writable":
                        os.rename(uploads, shared / entry)
                    elif planted == "a symlink":
                        os.symlink(elsewhere, shared / entry)
                    else:
                        os.mkdir(shared / entry)
                        os.chmod(shared / entry, 0o700)  # as private as ours

        as_nobody_now(work)

    def attack() -> None:
        as_nobody_now(lambda: (swap_inside(shared, secret), swap_names(shared, secret, "lib.so")))

    message = (
        f"{shared}: the directory ffitool created there to publish the new file was replaced"
        " by another; nothing was written"
    )
    with pytest.raises(InputError) as refused:
        _attacked_pack(monkeypatch, lib, payload, after_mkdir=plant, before_rename=attack)
    assert str(refused.value) == message
    assert lib.read_bytes() == before and not lib.is_symlink()
    assert secret.read_bytes() == b"root only\n"
    assert list(elsewhere.iterdir()) == []
    (name,) = [entry for entry in os.listdir(shared) if entry.endswith(".ffitool")]
    owner = (shared / name).lstat().st_uid  # what was planted is left to its owner
    assert owner == (0 if planted == "world-writable" else NOBODY)
    for entry in os.listdir(shared):  # what the attacker planted, now empty, and ours, moved
        path = shared / entry
        assert entry == "lib.so" or path.is_symlink() or not any(path.iterdir()), entry


def test_a_private_directory_taken_away_before_it_is_opened_is_one_error(
    victim, staging_mode, monkeypatch
):
    """`nobody` moves ffitool's new private directory away and puts nothing in its place:
    opening it fails (not a symlink, not a stranger's directory: it is simply gone), which is
    an error like any failed write, and the library is as it was."""
    from ffitool.errors import InputError

    lib, payload, _ = victim
    shared = lib.parent
    before = lib.read_bytes()

    def take_away() -> None:
        def work() -> None:
            for entry in os.listdir(shared):
                if entry.endswith(".ffitool"):
                    os.rename(shared / entry, shared / f"{entry}.moved")

        as_nobody_now(work)

    with pytest.raises(InputError) as refused:
        _attacked_pack(monkeypatch, lib, payload, after_mkdir=take_away)
    assert str(refused.value) == f"{lib}: cannot write: No such file or directory"
    assert lib.read_bytes() == before


def test_no_free_name_for_the_private_directory_is_one_error(victim, monkeypatch):
    """Every fresh name ffitool draws is taken (the random source pinned, the one name it
    gives planted): after 100 draws it gives up with one error, and writes nothing."""
    import ffitool.staging
    from ffitool.errors import InputError

    lib, payload, _ = victim
    before = sorted(os.listdir(lib.parent))
    monkeypatch.setattr(ffitool.staging.os, "urandom", lambda count: bytes(count))
    taken = lib.parent / f".{lib.name}.{bytes(6).hex()}.ffitool"
    taken.mkdir()
    with pytest.raises(InputError) as refused:
        _attacked_pack(monkeypatch, lib, payload)
    assert str(refused.value) == f"{lib.parent}: cannot create a file: no free temporary name"
    assert sorted(os.listdir(lib.parent)) == sorted([*before, taken.name])


@pytest.mark.parametrize(
    ("mode", "call", "failure"),
    [
        ("O_TMPFILE", "mkdir", OSError(errno.EIO, "Input/output error")),
        ("O_TMPFILE", "link", OSError(errno.EIO, "Input/output error")),
        ("O_TMPFILE", "rename", OSError(errno.EIO, "Input/output error")),
        ("O_TMPFILE", "rename", SystemExit(128 + signal.SIGTERM)),
        ("named", "mkdir", OSError(errno.EIO, "Input/output error")),
        ("named", "rename", OSError(errno.EIO, "Input/output error")),
        ("named", "rename", SystemExit(128 + signal.SIGTERM)),
    ],
)
def test_a_failure_while_publishing_leaves_nothing_behind(host, monkeypatch, mode, call, failure):
    """Whichever step of publishing fails (or a SIGTERM arrives there), the private directory
    and the file in it are gone and the library is as it was."""
    import ffitool.staging
    from ffitool.errors import InputError
    from ffitool.pack import pack_library

    lib, payload = host
    if mode == "named":
        monkeypatch.setattr(ffitool.staging, "_O_TMPFILE", 0)
    plan = _plan(lib, payload)
    before = lib.read_bytes()

    def fail() -> None:
        raise failure

    monkeypatch.setattr(ffitool.staging, "os", Hooked(**{f"before_{call}": fail}))
    with pytest.raises(InputError if isinstance(failure, OSError) else SystemExit) as raised:
        pack_library(lib, plan)
    if isinstance(failure, OSError):
        what = "cannot create a file" if call == "mkdir" else f"{lib}: cannot write"
        assert str(raised.value).endswith(f"{what}: Input/output error")
    assert lib.read_bytes() == before
    assert sorted(p.name for p in lib.parent.iterdir()) == ["lib.so", "payload.bin"]


@pytest.mark.parametrize("command", ["pack", "encode", "emit-c"])
@pytest.mark.parametrize("kind", ["device", "fifo", "symlink"])
@pytest.mark.xdist_group("packs-elf-fixtures")  # see conftest.py
@pytest.mark.slow
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, command, kind):
    require(os.geteuid() == 0, "mknod needs root")
    node = tmp_path / "out"
    if kind == "device":
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null
    elif kind == "fifo":
        os.mkfifo(node)
    else:
        (tmp_path / "elsewhere").write_bytes(b"kept")
        node.symlink_to(tmp_path / "elsewhere")
    before = os.lstat(node)
    directory = tmp_path / "parts"
    assert finished(ffitool("extract", str(FIXTURES / "libffi_c.so"), "-d", str(directory)))[0] == 0
    manifest = directory / "manifest.json"
    args = {
        "pack": ["pack", str(FIXTURES / "libffi_c.so"), "--manifest", str(manifest)],
        "encode": ["blob", "encode", str(manifest)],
        "emit-c": ["blob", "emit-c", str(manifest)],
    }[command]
    code, _, err = finished(ffitool(*args, "-o", str(node)))
    assert code == 3, err
    expected = "is a symbolic link" if kind == "symlink" else "exists and is not a regular file"
    assert err.startswith(f"ffitool: error: {node}: ") and expected in err
    assert len(err.splitlines()) == 1
    after = os.lstat(node)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    if kind == "symlink":
        assert (tmp_path / "elsewhere").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", "parts", *(["elsewhere"] if kind == "symlink" else [])]
    )


@pytest.mark.slow
def test_setuid_bits_go_only_to_the_owner_they_belonged_to(shared_dir):
    """Root keeps a setuid file's owner; a user who cannot keep it gets no setuid bit."""
    lib = shared_dir / "libsetuid.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", lib)
    os.chown(lib, NOBODY, NOBODY)
    lib.chmod(0o4755)
    payload = shared_dir / "payload.bin"
    payload.write_bytes(b"payload")
    payload.chmod(0o644)
    code, _, err = finished(ffitool("pack", str(lib), "--add", f"test_alpha:{payload}"))
    assert code == 0, err
    info = lib.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY, NOBODY, 0o4755)
    # Now the file belongs to root, and group nobody may write it: `nobody` packs it.
    os.chown(lib, 0, NOBODY)
    lib.chmod(0o6775)

    def pack(path: Path) -> None:
        from ffitool.edit.plan import Edits, plan_edits
        from ffitool.pack import existing_modules, pack_library, payload_source

        plan = plan_edits(
            existing_modules(path), Edits(add=(("test_beta", payload_source(str(payload))),))
        )
        pack_library(path, plan)

    # Once as root on a scratch copy: `nobody` cannot import from root's Python installation,
    # so every module the pack needs must be loaded before the fork.
    scratch = shared_dir / "scratch.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", scratch)
    pack(scratch)
    _, status = os.waitpid(as_nobody(lambda: pack(lib)), 0)
    assert os.waitstatus_to_exitcode(status) == 0
    info = lib.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY, NOBODY, 0o775)


@pytest.mark.parametrize("mode", [0o444, 0o644])
def test_in_place_pack_refuses_a_file_its_user_cannot_write(shared_dir, monkeypatch, mode):
    """`nobody` may write to the directory but not to root's library: in place, pack refuses,
    as patchelf does (Permission denied), instead of replacing the file through its directory.
    A copy elsewhere is fine, and root, who may write any file, packs even a 0444 one."""
    from ffitool.cli.main import run_app

    payload = shared_dir / "payload.bin"
    payload.write_bytes(b"payload")
    payload.chmod(0o644)
    lib = shared_dir / "lib.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", lib)
    lib.chmod(mode)
    args = ("pack", str(lib), "--add", f"test_alpha:{payload}")
    before = lib.read_bytes()
    monkeypatch.setattr(sys, "argv", ["ffitool", *args, "-o", str(shared_dir / "a.so")])
    assert run_app() == 0  # as root, imports every module the command needs, for `nobody`
    (shared_dir / "a.so").unlink()
    code, out, err = cli_as_nobody(*args)
    assert (code, out, err) == (
        3,
        "",
        f"ffitool: error: {lib}: cannot write: Permission denied (use -o to write a packed"
        " copy elsewhere)\n",
    )
    assert lib.read_bytes() == before
    assert sorted(p.name for p in shared_dir.iterdir()) == ["lib.so", "payload.bin"]
    code, _, err = cli_as_nobody(*args, "-o", str(shared_dir / "copy.so"), "--quiet")
    assert (code, err) == (0, "")
    assert (shared_dir / "copy.so").stat().st_uid == NOBODY
    monkeypatch.setattr(sys, "argv", ["ffitool", *args, "--quiet"])
    assert run_app() == 0  # root, in place
    info = lib.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, mode)
    assert lib.read_bytes() != before


@pytest.mark.slow
def test_concurrent_packs_never_lose_a_module(tmp_path):
    """Two packs of one file at once: both modules end up in it, or the loser says why."""
    lib = tmp_path / "conc.so"
    outcomes = set()
    # The race is timing-dependent: on a loaded machine the two packs may run one after the
    # other many times in a row, so try until it has happened (each round is also checked).
    for round_ in range(40):
        if "refused" in outcomes and round_ >= 10:
            break
        shutil.copyfile(FIXTURES / "libffi_c.so", lib)
        payloads = []
        for kind in ("test_alpha", "test_beta"):
            payloads.append(tmp_path / f"{kind}.bin")
            payloads[-1].write_bytes(os.urandom(4 << 20))
        first, second = (
            ffitool("pack", str(lib), "--add", f"{kind}:{path}")
            for kind, path in zip(("test_alpha", "test_beta"), payloads, strict=True)
        )
        results = [finished(first), finished(second)]
        kinds = [m.kind for m in inspect_path(lib).libraries[0].library_bin.modules]
        codes = [code for code, _, _ in results]
        if codes == [0, 0]:
            assert {"test_alpha", "test_beta"} <= set(kinds)  # one ran after the other
            outcomes.add("both")
            continue
        assert sorted(codes) == [0, 3], results
        loser = results[codes.index(3)][2]
        assert (
            "another ffitool pack is rewriting it" in loser
            or "changed while it was being packed" in loser
            or "changed since its blob was read" in loser
            or "changed while its blob was read" in loser
        ), loser
        winner = ("test_alpha", "test_beta")[codes.index(0)]
        assert winner in kinds
        outcomes.add("refused")
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".ffitool")] == []
    assert "refused" in outcomes  # the race did happen at least once


def wait_until_staged(process: subprocess.Popen, directory: Path) -> None:
    """Until the process holds its new, unnamed file in `directory` open (`/proc` shows it as
    `#inode (deleted)`): its signal handlers are then in place and the copy under way. A
    fixed sleep instead would signal a process still starting on a busy machine."""
    descriptors = Path(f"/proc/{process.pid}/fd")
    while process.poll() is None:
        with contextlib.suppress(OSError):  # descriptors come and go while it runs
            for fd in descriptors.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(f"{directory}/#"):
                        return
        time.sleep(0.01)
    raise AssertionError("the pack ended before its new file was staged")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_in_the_middle_of_a_large_pack_leaves_nothing_behind(tmp_path, sig):
    lib = tmp_path / "big.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", lib)
    original = lib.read_bytes()
    payload = tmp_path / "payload.bin"
    with open(payload, "wb") as handle:
        handle.truncate(1 << 30)  # sparse: cheap to make, a second or more to copy and verify
    process = ffitool("pack", str(lib), "--add", f"test_alpha:{payload}")
    wait_until_staged(process, tmp_path)
    process.send_signal(sig)
    code, _, err = finished(process)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig), err
    assert lib.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.so", "payload.bin"]
    if sig != signal.SIGKILL:
        assert "Traceback" not in err


def _plan(lib: Path, payload: Path):
    from ffitool.edit.plan import Edits, plan_edits
    from ffitool.pack import existing_modules, payload_source

    return plan_edits(
        existing_modules(lib), Edits(add=(("test_beta", payload_source(str(payload))),))
    )


@pytest.fixture
def host(tmp_path):
    lib = tmp_path / "lib.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", lib)
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"payload")
    return lib, payload


def test_a_library_locked_by_another_pack_is_refused(host):
    import fcntl

    lib, payload = host
    with open(lib, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        code, _, err = finished(ffitool("pack", str(lib), "--add", f"test_alpha:{payload}"))
    assert (code, err) == (
        3,
        f"ffitool: error: {lib}: another ffitool pack is rewriting it; try again\n",
    )


def test_a_plan_made_from_an_older_library_is_refused(host):
    """The blob was read, then the library was replaced: its old ranges must not be copied."""
    from ffitool.errors import InputError
    from ffitool.pack import pack_library

    lib, payload = host
    stale = _plan(lib, payload)
    pack_library(lib, _plan(lib, payload))  # another pack lands first
    before = lib.read_bytes()
    with pytest.raises(InputError, match="changed since its blob was read; nothing was written"):
        pack_library(lib, stale)
    assert lib.read_bytes() == before


def test_a_library_modified_while_packed_is_not_replaced(host):
    from ffitool.errors import InputError
    from ffitool.pack import pack_library

    lib, payload = host
    host_without_blob = FIXTURES / "libpack_host_gnu.so"  # no kept modules to copy from it
    shutil.copyfile(host_without_blob, lib)

    def meddle(_: int) -> None:  # called while the blob is written, once per payload chunk
        if lib.stat().st_size == host_without_blob.stat().st_size:
            with open(lib, "ab") as handle:
                handle.write(b"\0")

    with pytest.raises(InputError, match="changed while it was being packed; nothing was written"):
        pack_library(lib, _plan(lib, payload), progress=meddle)
    assert lib.read_bytes() == host_without_blob.read_bytes() + b"\0"
    assert sorted(p.name for p in lib.parent.iterdir()) == ["lib.so", "payload.bin"]


def test_a_library_modified_while_its_blob_is_read_is_refused(host, monkeypatch):
    import ffitool.pack as pack
    from ffitool.errors import InputError

    lib, _ = host
    reader = pack._packable

    def read_then_meddle(*args, **options):
        found = reader(*args, **options)
        with open(lib, "ab") as handle:
            handle.write(b"\0")
        return found

    monkeypatch.setattr(pack, "_packable", read_then_meddle)
    with pytest.raises(InputError, match="changed while its blob was read"):
        pack.existing_modules(lib)


@contextlib.contextmanager
def hang_guard(seconds: int = 300) -> Iterator[None]:
    """Fail the test, rather than block the run, if the code under test blocks (opening a
    FIFO nobody writes to does): a guard, far above any real duration, not a measurement."""

    def expire(*_: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def replace_with(path: Path, swap: str, secret: Path) -> None:
    """Point `path` elsewhere: a symlink to `secret`, another file, or a FIFO nobody writes."""
    path.unlink()
    if swap == "symlink":
        path.symlink_to(secret)
    elif swap == "new file":
        path.write_bytes(b"another file")
    else:
        os.mkfifo(path)


def last_module_sha256(lib: Path) -> str:
    (library,) = inspect_path(lib).libraries
    return library.library_bin.modules[-1].sha256


SWAPS = ["symlink", "new file", "fifo"]


@pytest.mark.parametrize("swap", SWAPS)
def test_a_payload_swapped_after_it_was_checked_is_not_read(host, tmp_path, swap):
    """Between the check of a payload and the copy, its path is pointed elsewhere: the copy
    reads the file that was checked, through the descriptor it was checked on, and a FIFO
    there cannot block it."""
    from ffitool.pack import pack_library

    lib, payload = host
    plan = _plan(lib, payload)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the blob")
    replace_with(payload, swap, secret)
    with hang_guard():
        pack_library(lib, plan)
    assert last_module_sha256(lib) == hashlib.sha256(b"payload").hexdigest()


def test_a_payload_modified_after_it_was_checked_is_refused(host):
    """The descriptor held is the file checked; changed through another one, it is refused."""
    from ffitool.errors import InputError
    from ffitool.pack import pack_library

    lib, payload = host
    plan = _plan(lib, payload)
    with open(payload, "ab") as handle:
        handle.write(b" and more")
    before = lib.read_bytes()
    with pytest.raises(InputError) as refused:
        pack_library(lib, plan)
    assert str(refused.value) == f"{payload}: changed after it was checked; nothing was written"
    assert lib.read_bytes() == before


@pytest.mark.parametrize("writer", ["pack", "encode", "emit-c"])
@pytest.mark.parametrize("swap", SWAPS)
@pytest.mark.xdist_group("packs-elf-fixtures")  # see conftest.py
def test_a_manifest_file_swapped_after_it_was_checked_is_not_read(tmp_path, writer, swap):
    """The same between reading a manifest (which checks its files' sizes and digests) and
    writing what it describes, for each writer."""
    from ffitool.edit.plan import plan_from_modules
    from ffitool.emit import write_c_source, write_raw_blob
    from ffitool.manifest import extract, read_manifest
    from ffitool.pack import pack_library

    parts = tmp_path / "parts"
    extract(FIXTURES / "libffi_c.so", parts)
    plan = plan_from_modules(read_manifest(parts / "manifest.json"))
    checked = (parts / "002-test_beta.bin").read_bytes()
    replace_with(parts / "002-test_beta.bin", swap, parts / "001-test_alpha.bin")
    out = tmp_path / "out"
    with hang_guard():
        if writer == "pack":
            pack_library(FIXTURES / "libffi_c.so", plan, out)
        elif writer == "encode":
            write_raw_blob(plan, out)
        else:
            write_c_source(plan, out)
    if writer == "pack":
        assert last_module_sha256(out) == hashlib.sha256(checked).hexdigest()
        return
    written = out.read_bytes()
    if writer == "emit-c":  # the blob's bytes, as the C array spells them
        written = bytes(int(digits, 16) for digits in re.findall(rb"0x([0-9a-f]{2}),", written))
    assert written.endswith(checked)


@pytest.mark.parametrize("swap", SWAPS)
def test_a_library_swapped_while_extracted_is_read_where_it_was_inspected(
    tmp_path, monkeypatch, swap
):
    """`extract` inspects the library, then copies the payloads out: a swap of its path in
    between changes nothing, since both go through one descriptor."""
    import ffitool.manifest
    from ffitool.manifest import extract

    lib = tmp_path / "lib.so"
    shutil.copyfile(FIXTURES / "libffi_c.so", lib)
    original = lib.read_bytes()
    target = ffitool.manifest._open_target  # called between the inspection and the copies

    def swapped_first(directory: Path):
        replace_with(lib, swap, FIXTURES / "libffi_cpp.so")
        return target(directory)

    monkeypatch.setattr(ffitool.manifest, "_open_target", swapped_first)
    with hang_guard():
        extract(lib, tmp_path / "parts")
    monkeypatch.undo()
    (tmp_path / "again.so").write_bytes(original)
    extract(tmp_path / "again.so", tmp_path / "expected")
    for name in ("manifest.json", "001-test_alpha.bin", "002-test_beta.bin"):
        have, want = (tmp_path / "parts" / name).read_bytes(), (tmp_path / "expected" / name)
        if name == "manifest.json":
            have = have.replace(str(lib).encode(), str(tmp_path / "again.so").encode())
        assert have == want.read_bytes(), name


def test_a_library_swapped_for_a_fifo_while_packed_does_not_block(host, monkeypatch):
    """`pack` inspects and rewrites the library through the descriptor it locked: a FIFO put
    at its path in between blocks nothing and replaces nothing; the original is unchanged."""
    import ffitool.pack as pack

    lib, payload = host
    plan = _plan(lib, payload)
    kept = lib.parent / "kept"
    os.link(lib, kept)  # the original file, whatever happens to its name
    before = kept.read_bytes()
    inspect_it = pack._packable

    def inspect_then_swap(*args, **options):
        found = inspect_it(*args, **options)
        lib.unlink()
        os.mkfifo(lib)
        return found

    monkeypatch.setattr(pack, "_packable", inspect_then_swap)
    from ffitool.errors import InputError

    with hang_guard(), pytest.raises(InputError) as refused:
        pack.pack_library(lib, plan)
    assert str(refused.value) == f"{lib}: exists and is not a regular file; not replacing it"
    assert stat.S_ISFIFO(lib.lstat().st_mode) and kept.read_bytes() == before
    assert sorted(p.name for p in lib.parent.iterdir()) == ["kept", "lib.so", "payload.bin"]


@pytest.mark.slow
@pytest.mark.xdist_group("packs-elf-fixtures")  # see conftest.py
def test_dash_writes_the_verified_output_to_stdout(tmp_path):
    """`-o -`: the bytes a file output would get go to standard output, the summary to stderr."""
    directory = tmp_path / "parts"
    assert finished(ffitool("extract", str(FIXTURES / "libffi_c.so"), "-d", str(directory)))[0] == 0
    manifest = directory / "manifest.json"
    library = str(FIXTURES / "libffi_c.so")
    for args in (
        ["blob", "encode", str(manifest)],
        ["blob", "emit-c", str(manifest)],
        ["pack", library, "--manifest", str(manifest)],
    ):
        as_file = tmp_path / "out"
        assert finished(ffitool(*args, "-o", str(as_file)))[0] == 0
        process = subprocess.run(
            [sys.executable, "-m", "ffitool", *args, "-o", "-"], cwd=ROOT, capture_output=True
        )
        assert process.returncode == 0, process.stderr
        assert process.stdout == as_file.read_bytes()
        assert process.stderr.decode().endswith(" -\n")
        as_file.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


@pytest.mark.parametrize("reader", ["gone before", "reads 10 bytes", "/dev/full"])
@pytest.mark.parametrize("command", ["pack", "encode", "emit-c"])
@pytest.mark.xdist_group("packs-elf-fixtures")  # see conftest.py
def test_a_refused_standard_output_is_never_a_success(tmp_path, command, reader):
    """`-o - | head -c 10`: the output does not fit in the pipe (4 MiB of payload), the reader
    leaves, and no "packed ... into -" claims what was not delivered: exit 141 and nothing on
    stderr, as for every command whose reader went away. Standard output on a full device is
    a one-line error, exit 3."""
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(4 << 20))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        '{"schema": "ffitool.manifest/1", "modules": [{"index": 0, "kind": "_lib",'
        ' "imports": [1]}, {"index": 1, "kind": "test_alpha", "file": "payload.bin"}]}'
    )
    args = {
        "pack": ["pack", str(FIXTURES / "libffi_c.so"), "--add", f"test_alpha:{payload}"],
        "encode": ["blob", "encode", str(manifest)],
        "emit-c": ["blob", "emit-c", str(manifest)],
    }[command]
    if reader == "/dev/full":
        with open("/dev/full", "wb") as full:
            process = ffitool(*args, "-o", "-", stdout=full)
        _, err = process.communicate(timeout=300)
        assert (process.returncode, err) == (
            3,
            "ffitool: error: -: cannot write to standard output: No space left on device\n",
        )
        return
    read_end, write_end = os.pipe()
    if reader == "gone before":
        os.close(read_end)
    process = ffitool(*args, "-o", "-", stdout=write_end)
    os.close(write_end)
    if reader == "reads 10 bytes":
        assert len(os.read(read_end, 10)) > 0
        os.close(read_end)
    _, err = process.communicate(timeout=300)
    assert (process.returncode, err) == (141, "")
