"""Issue 7, items 2 and 5: `extract` cannot be redirected, manifests are read like payloads.

Each attack runs through the real command line and checks the exit code, the exact one-line
error and, where a file outside was the target, that it is byte-identical afterwards. The
mutation fuzz at the end drives `read_manifest` in process with a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import CPU_SCALE, FIXTURES, uninstrumented
from conftest import ffitool as run_ffitool

from ffitool.edit.plan import plan_from_modules
from ffitool.edit.stream import blob_size
from ffitool.errors import FfitoolError
from ffitool.library import inspect_path
from ffitool.manifest import read_manifest

LIB = FIXTURES / "libffi_c.so"
# libffi_c.so's blob: _lib importing test_alpha (16 bytes) and test_beta (300 bytes).
PAYLOADS = ["001-test_alpha.bin", "002-test_beta.bin"]
SECRET = b"root:$6$not-for-you:19000:0:99999:7:::\n"
NOT_EMPTY = "directory is not empty; use --force to replace the files extract writes"
OUTSIDE = "`file` must be a path inside the manifest's folder"
SURROGATE = "holds a lone surrogate, which UTF-8 cannot encode"
THROUGH_LINK = "goes through a symbolic link; a manifest names only files inside its folder"


def ffitool(*args: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI; `limit_file_size` makes writes past that many bytes fail with EFBIG."""

    def limit() -> None:
        assert limit_file_size is not None
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    if limit_file_size is None:
        return run_ffitool(*args, timeout=300)  # a FIFO manifest used to hang: fail the test
    # Coverage could not save its data under the limit either: the child runs without it.
    return run_ffitool(*args, timeout=300, preexec_fn=limit, env=uninstrumented())


def refused(result: subprocess.CompletedProcess[str], message: str, code: int = 3) -> None:
    assert (result.returncode, result.stderr) == (code, f"ffitool: error: {message}\n")
    assert result.stdout == ""


def snapshot(directory: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry of a directory: regular files by content, links by target, dirs by name."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            found[entry.name] = ("link", os.readlink(entry))
        elif entry.is_dir():
            found[entry.name] = ("dir", "")
        else:
            found[entry.name] = ("file", entry.read_bytes())
    return found


def extracted(directory: Path) -> dict[str, bytes]:
    """What a correct extract of LIB into `directory` holds, checked against its manifest."""
    manifest = json.loads((directory / "manifest.json").read_text())
    files = {}
    for module in manifest["modules"]:
        if "file" in module:
            path = directory / module["file"]
            assert not path.is_symlink()
            data = path.read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (
                module["size"],
                module["sha256"],
            )
            files[module["file"]] = data
    assert sorted(files) == PAYLOADS
    return files


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every directory the tool is pointed at: it must never change."""
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


# --- extract -----------------------------------------------------------------------------


@pytest.mark.slow
def test_extract_never_writes_through_symlinks_in_the_directory(tmp_path, secret):
    directory = tmp_path / "out"
    directory.mkdir()
    (directory / PAYLOADS[0]).symlink_to(secret)
    (directory / "manifest.json").symlink_to(secret)
    refused(ffitool("extract", str(LIB), "-d", str(directory)), f"{directory}: {NOT_EMPTY}")
    assert secret.read_bytes() == SECRET

    result = ffitool("extract", str(LIB), "-d", str(directory), "--force")
    assert result.returncode == 0, result.stderr
    assert secret.read_bytes() == SECRET
    assert not (directory / "manifest.json").is_symlink()
    extracted(directory)  # the links themselves were replaced by the real files
    assert sorted(p.name for p in directory.iterdir()) == [*PAYLOADS, "manifest.json"]


def test_a_symlink_as_the_directory_itself_is_refused(tmp_path, secret):
    link = tmp_path / "out"
    link.symlink_to(secret.parent)
    refused(
        ffitool("extract", str(LIB), "-d", str(link)),
        f"{link}: is a symbolic link; give the directory it names",
    )
    assert sorted(p.name for p in secret.parent.iterdir()) == ["shadow"]
    assert secret.read_bytes() == SECRET


@pytest.mark.slow
def test_a_failed_extract_keeps_the_files_that_were_there(tmp_path):
    """The issue's case: a user file where a payload goes, then a failure after writing it."""
    directory = tmp_path / "out"
    (directory / PAYLOADS[1]).mkdir(parents=True)  # makes the second payload fail
    (directory / PAYLOADS[0]).write_bytes(b"the user's own file")
    before = snapshot(directory)
    refused(ffitool("extract", str(LIB), "-d", str(directory)), f"{directory}: {NOT_EMPTY}")
    assert snapshot(directory) == before
    refused(
        ffitool("extract", str(LIB), "-d", str(directory), "--force"),
        f"{directory / PAYLOADS[1]}: cannot replace: Is a directory",
    )
    assert snapshot(directory) == before


@pytest.mark.slow
def test_a_write_failing_midway_removes_only_what_extract_created(tmp_path):
    """RLIMIT_FSIZE lets the 16-byte payload through and fails the 300-byte one (EFBIG)."""
    earlier = tmp_path / "earlier"
    assert ffitool("extract", str(LIB), "-d", str(earlier)).returncode == 0
    (earlier / PAYLOADS[0]).write_bytes(b"old payload")
    (earlier / "notes.txt").write_bytes(b"mine")
    before = snapshot(earlier)
    result = ffitool("extract", str(LIB), "-d", str(earlier), "--force", limit_file_size=100)
    refused(result, f"{earlier}: cannot write: File too large")
    assert snapshot(earlier) == before  # no temporary file left, nothing replaced

    empty = tmp_path / "empty"
    empty.mkdir()
    result = ffitool("extract", str(LIB), "-d", str(empty), limit_file_size=100)
    refused(result, f"{empty}: cannot write: File too large")
    assert list(empty.iterdir()) == []  # the directory was there before: it stays

    new = tmp_path / "new"
    result = ffitool("extract", str(LIB), "-d", str(new), limit_file_size=100)
    refused(result, f"{new}: cannot write: File too large")
    assert not new.exists()  # extract created it: it goes too


@pytest.mark.slow
def test_force_replaces_exactly_the_files_extract_names(tmp_path, secret):
    directory = tmp_path / "out"
    assert ffitool("extract", str(LIB), "-d", str(directory)).returncode == 0
    first = extracted(directory)
    (directory / PAYLOADS[1]).write_bytes(b"stale")
    (directory / "003-test_gamma.bin").write_bytes(b"from an earlier, larger blob")
    (directory / "004-test_delta.bin").symlink_to(secret)
    (directory / "notes.txt").write_bytes(b"kept")
    (directory / ".hidden").write_bytes(b"kept too")
    (directory / "sub").mkdir()
    (directory / "sub" / "005-x.bin").write_bytes(b"not at the top: kept")
    result = ffitool("extract", str(LIB), "-d", str(directory), "--force")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"wrote 2 payloads and {directory / 'manifest.json'}\n"
    assert sorted(p.name for p in directory.iterdir()) == [
        ".hidden",
        *PAYLOADS,
        "manifest.json",
        "notes.txt",
        "sub",
    ]
    assert extracted(directory) == first
    assert (directory / "notes.txt").read_bytes() == b"kept"
    assert (directory / ".hidden").read_bytes() == b"kept too"
    assert (directory / "sub" / "005-x.bin").read_bytes() == b"not at the top: kept"
    assert secret.read_bytes() == SECRET  # the stale link went, not what it pointed to


# --- manifests ---------------------------------------------------------------------------


def write_manifest(folder: Path, modules: list[dict[str, object]], **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    path.write_text(json.dumps({"schema": "ffitool.manifest/1", "modules": modules, **extra}))
    return path


def one_payload(file: object, kind: object = "test_alpha", **fields: object) -> list[dict]:
    return [
        {"index": 0, "kind": "_lib", "imports": [1]},
        {"index": 1, "kind": kind, "imports": [], "file": file, **fields},
    ]


@pytest.fixture
def host(tmp_path: Path) -> Path:
    lib = tmp_path / "host.so"
    shutil.copyfile(FIXTURES / "libpack_host_gnu.so", lib)
    return lib


def test_a_device_manifest_is_refused_without_reading_it(host):
    before = host.read_bytes()
    refused(ffitool("pack", str(host), "--manifest", "/dev/zero"), "/dev/zero: not a regular file")
    assert host.read_bytes() == before


@pytest.mark.slow
def test_a_fifo_manifest_is_refused_without_blocking(tmp_path, host):
    fifo = tmp_path / "manifest.json"
    os.mkfifo(fifo)
    refused(ffitool("pack", str(host), "--manifest", str(fifo)), f"{fifo}: not a regular file")
    out = tmp_path / "blob.bin"
    refused(ffitool("blob", "encode", str(fifo), "-o", str(out)), f"{fifo}: not a regular file")
    refused(
        ffitool("blob", "emit-c", str(fifo), "-o", str(tmp_path / "b.c")),
        f"{fifo}: not a regular file",
    )
    assert not out.exists()


def test_a_fifo_payload_is_refused_without_blocking(tmp_path):
    (tmp_path / "m").mkdir()
    os.mkfifo(tmp_path / "m" / "p.bin")
    manifest = write_manifest(tmp_path / "m", one_payload("p.bin"))
    refused(
        ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "o")),
        f"{tmp_path / 'm' / 'p.bin'}: not a regular file",
    )


def test_an_oversized_manifest_is_refused_before_it_is_read(tmp_path):
    manifest = tmp_path / "manifest.json"
    with open(manifest, "wb") as handle:
        handle.truncate((16 << 20) + 1)  # sparse: costs no disk
    refused(
        ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "o")),
        f"{manifest}: 16777217 bytes; a manifest may hold at most 16 MiB",
    )


@pytest.mark.slow
def test_deep_nesting_is_refused_without_recursing(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    refused(
        ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "o")),
        f"{manifest}: JSON nested deeper than 16 levels",
    )
    # Brackets inside strings do not nest: a kind full of them is still a manifest.
    (tmp_path / "p.bin").write_bytes(b"x")
    ok = write_manifest(tmp_path, one_payload("p.bin", kind="[" * 100 + "{" * 100))
    result = ffitool("blob", "encode", str(ok), "-o", str(tmp_path / "o"))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


START = "line 1 column 1 (char 0)"


def children_cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.slow
def test_the_nesting_check_stays_linear_on_hostile_text(tmp_path):
    """10 MB of escaped quotes (quadratic for a string regex) and 8M brackets: each is
    refused in well under 8 s of CPU (about 1 s here; a quadratic scan would take hours)."""
    manifest = tmp_path / "manifest.json"
    for text, message in (
        ('"' + '\\"' * 5_000_000, f"not JSON: Unterminated string starting at: {START}"),
        ("[" * 4_000_000 + "]" * 4_000_000, "JSON nested deeper than 16 levels"),
    ):
        manifest.write_text(text)
        before = children_cpu_time()
        result = ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "o"))
        assert (children_cpu_time() - before) / CPU_SCALE < 8
        refused(result, f"{manifest}: {message}")


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (one_payload("a\0b"), f"module 1: {OUTSIDE}"),
        (one_payload("p.bin", kind="\ud800"), f"module 1: `kind` {SURROGATE}"),
        (one_payload("\udc80.bin"), f"module 1: `file` {SURROGATE}"),
        (one_payload(7), "module 1: `file` must be a string"),
        (one_payload("p.bin", kind=["x"]), "module 1: `kind` must be a string"),
        (one_payload(""), f"module 1: {OUTSIDE}"),
        (one_payload("/etc/shadow"), f"module 1: {OUTSIDE}"),
        (one_payload("../x.bin"), f"module 1: {OUTSIDE}"),
        (one_payload("a/../../x.bin"), f"module 1: {OUTSIDE}"),
        (one_payload("p.bin", size="1"), "module 1: `size` must be a byte count"),
        (one_payload("p.bin", size=True), "module 1: `size` must be a byte count"),
        (
            one_payload("p.bin", sha256="AB" * 32),
            "module 1: `sha256` must be 64 lowercase hex digits",
        ),
        (one_payload("p.bin", extra=1), "module 1: unknown key `extra`"),
        (
            [{"index": True, "kind": "_lib"}],
            "module 0: entries must be objects listed in index order",
        ),
        (
            [{"index": 0, "kind": "_lib", "imports": [False]}],
            "module 0: `imports` must list module indices below 1",
        ),
        (
            [{"index": 0, "kind": "_lib", "size": 1}],
            "module 0: `_lib` has no payload file",
        ),
    ],
)
def test_every_field_is_type_checked(tmp_path, modules, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "p.bin").write_bytes(b"x")
    manifest = write_manifest(tmp_path / "m", modules)
    result = ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "o"))
    refused(result, f"{manifest}: {message}")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_top_level_fields_are_type_checked(tmp_path):
    manifest = write_manifest(tmp_path, one_payload("p.bin"), source=3)
    refused(
        ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "o")),
        f"{manifest}: `source` must be a string",
    )
    manifest = write_manifest(tmp_path, one_payload("p.bin"), comment="x")
    refused(
        ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "o")),
        f"{manifest}: unknown key `comment`",
    )


@pytest.mark.slow
def test_a_symlink_leaving_the_folder_is_not_followed(tmp_path, host, secret):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "payload.bin").symlink_to(secret)
    manifest = write_manifest(folder, one_payload("payload.bin"))
    before = host.read_bytes()
    refused(
        ffitool("pack", str(host), "--manifest", str(manifest)),
        f"{folder / 'payload.bin'}: {THROUGH_LINK}",
    )
    assert host.read_bytes() == before
    out = tmp_path / "blob.bin"
    refused(
        ffitool("blob", "encode", str(manifest), "-o", str(out)),
        f"{folder / 'payload.bin'}: {THROUGH_LINK}",
    )
    assert not out.exists()


@pytest.mark.slow
def test_a_relative_path_through_a_symlinked_directory_is_not_followed(tmp_path, host, secret):
    folder = tmp_path / "parts"
    (folder / "real").mkdir(parents=True)
    (folder / "real" / "ok.bin").write_bytes(b"inside")
    (folder / "real" / "up").symlink_to(secret.parent)
    manifest = write_manifest(folder, one_payload("real/up/shadow"))
    before = host.read_bytes()
    refused(
        ffitool("pack", str(host), "--manifest", str(manifest)),
        f"{folder / 'real' / 'up' / 'shadow'}: {THROUGH_LINK}",
    )
    assert host.read_bytes() == before
    # A plain subdirectory is fine: the same manifest shape without the link encodes.
    manifest = write_manifest(folder, one_payload("real/ok.bin"))
    result = ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "blob.bin"))
    assert (result.returncode, result.stderr) == (0, "")
    assert (tmp_path / "blob.bin").read_bytes().endswith(b"inside")


# --- mutation fuzz -----------------------------------------------------------------------

_SEED = 7
_ROUNDS = 1500
_WEIRD: list[object] = [
    None,
    True,
    0,
    -1,
    1,
    2**70,
    1.5,
    float("inf"),
    "",
    "_lib",
    "\ud800",
    "a\0b",
    "../001-test_alpha.bin",
    "/etc/passwd",
    "manifest.json",
    "001-test_alpha.bin/",
    ".",
    [],
    [0],
    [1, 1, 1],
    [2, 1, 0],
    {},
    {"index": 0},
    "0" * 64,
]


def _mutate(document: object, rng: random.Random) -> object:
    """Delete, replace or add one value at a node picked uniformly from the tree (a new tree)."""
    copy = json.loads(json.dumps(document))
    containers: list[dict | list] = []
    pending: list[object] = [copy]
    while pending:
        node = pending.pop()
        if isinstance(node, dict | list):
            containers.append(node)
            pending.extend(node.values() if isinstance(node, dict) else node)
    target = rng.choice(containers)
    keys = list(target) if isinstance(target, dict) else list(range(len(target)))
    action = rng.random()
    if keys and action < 0.2:
        del target[rng.choice(keys)]
    elif isinstance(target, dict) and action < 0.35:
        target[rng.choice(["extra", "index", "kind", "file", "size", "sha256"])] = _weird(rng)
    elif isinstance(target, list) and action < 0.35:
        target.insert(rng.randrange(len(target) + 1), _weird(rng))
    elif keys:
        target[rng.choice(keys)] = _weird(rng)
    return copy


def _weird(rng: random.Random) -> object:
    return rng.choice(_WEIRD)


def _text_mutation(text: str, rng: random.Random) -> str:
    """A textual change: truncation, a JSON metacharacter, or a value nested very deep."""
    at = rng.randrange(len(text))
    choice = rng.random()
    if choice < 0.25:
        return text[:at]
    if choice < 0.4:
        depth = rng.choice([17, 1000, 100_000])
        return text[:at] + "[" * depth + "0" + "]" * depth + text[at:]
    return text[:at] + rng.choice('[]{}",:\\0-e') + text[at + 1 :]


@pytest.mark.slow
def test_mutated_manifests_fail_cleanly_with_bounded_memory(tmp_path):
    folder = tmp_path / "parts"
    assert ffitool("extract", str(LIB), "-d", str(folder)).returncode == 0
    original = json.loads((folder / "manifest.json").read_text())
    rng = random.Random(_SEED)
    manifest = folder / "manifest.json"
    outcomes = {"read": 0, "refused": 0}
    start = time.process_time()
    tracemalloc.start()
    try:
        for _ in range(_ROUNDS):
            mutated = original
            for _ in range(rng.randint(1, 3)):
                mutated = _mutate(mutated, rng)
            text = json.dumps(mutated)
            if rng.random() < 0.3:
                text = _text_mutation(text, rng)
            manifest.write_text(text)
            tracemalloc.reset_peak()
            try:
                modules = read_manifest(manifest)
                blob_size(plan_from_modules(modules))
                outcomes["read"] += 1
            except FfitoolError as exc:
                assert "\n" not in str(exc) and str(exc).isprintable(), str(exc)
                outcomes["refused"] += 1
            assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    cpu = time.process_time() - start  # CPU seconds: about 6 here, with tracemalloc on
    assert cpu < 60, cpu
    # The mutations reach both sides: some still describe a valid blob, most are refused.
    assert outcomes["read"] > 20 and outcomes["refused"] > 500, outcomes


# --- issue 19, item 6: payload files are named by what they hold ---------------------------

PTX_TEXT = (
    b"//\n// a kernel\n//\n.version 8.0\n.target sm_80\n.address_size 64\n\n"
    b".visible .entry scale(\n\t.param .u64 scale_param_0\n)\n{\n\tret;\n}\n"
)


def test_extract_names_device_code_by_content_and_force_replaces_those_names(tmp_path):
    """PTX is written as `.ptx` (under any kind: the content decides), other payloads stay
    `.bin`; the manifest names the files, and packing it back gives the same blob."""
    lib = tmp_path / "lib.so"
    shutil.copyfile(LIB, lib)
    ptx = tmp_path / "kernel.ptx"
    ptx.write_bytes(PTX_TEXT)
    added = ffitool("pack", str(lib), "--add", f"cuda_ptx:{ptx}", "--add", f"test_sys:{ptx}")
    assert added.returncode == 0, added.stderr
    directory = tmp_path / "out"
    directory.mkdir()
    (directory / "003-cuda_ptx.ptx").write_bytes(b"stale, from an earlier extract")
    (directory / "009-old.cubin").write_bytes(b"stale too")
    (directory / "kernel.ptx").write_bytes(b"not a name extract writes: kept")
    result = ffitool("extract", str(lib), "-d", str(directory), "--force")
    assert (result.returncode, result.stderr) == (0, "")
    names = [*PAYLOADS, "003-cuda_ptx.ptx", "004-test_sys.ptx"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [*names, "kernel.ptx", "manifest.json"]
    )
    assert (directory / "003-cuda_ptx.ptx").read_bytes() == PTX_TEXT
    assert (directory / "kernel.ptx").read_bytes() == b"not a name extract writes: kept"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [m.get("file") for m in manifest["modules"]] == [None, *names]
    again = tmp_path / "again.blob"
    encoded = ffitool("blob", "encode", str(directory / "manifest.json"), "-o", str(again))
    assert encoded.returncode == 0, encoded.stderr
    (library,) = inspect_path(lib).libraries
    blob = library.library_bin
    assert blob is not None and blob.file_offset is not None and blob.nbytes is not None
    with open(lib, "rb") as handle:
        handle.seek(blob.file_offset)
        assert again.read_bytes() == handle.read(8 + blob.nbytes)
