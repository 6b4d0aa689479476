"""Manifests: a blob's tree as JSON next to one file per payload (`ffitool.manifest/1`).

`extract` writes one, `pack --manifest`, `blob encode` and `blob emit-c` read one. Reading
checks every file against the size and sha256 recorded, so a stale directory is caught
before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ffitool.blob import LIB_KIND, UNKEEPABLE, unreachable_from
from ffitool.edit.plan import ExistingModule, PayloadSource, file_identity
from ffitool.edit.stream import InputFile, copy_payload, open_input
from ffitool.errors import InputError, UsageError
from ffitool.files import open_regular_file
from ffitool.findings import listed, printable, unsurrogated, with_exact_bytes
from ffitool.library import EmbeddedCubin, LibraryBin, ModuleInfo, file_sha256, inspect_open
from ffitool.payloads import FILE_EXTENSIONS, file_extension
from ffitool.symbols import LIBRARY_BIN

MANIFEST_SCHEMA = "ffitool.manifest/1"
MANIFEST_NAME = "manifest.json"
_EXTENSIONS = "|".join(re.escape(e) for e in (".bin", *FILE_EXTENSIONS.values()))
_PAYLOAD_NAME = re.compile(rf"[0-9]{{3,}}-[A-Za-z0-9_.-]+(?:{_EXTENSIONS})")
"""The names `extract` gives payload files (see `_payload_name`): what `--force` may replace."""


@dataclass(frozen=True)
class Extracted:
    """What `extract` wrote."""

    manifest: Path
    files: tuple[Path, ...]


def extract(
    library: Path, directory: Path, symbol_prefix: str | None = None, force: bool = False
) -> Extracted:
    """Write each payload of the library's blob to `directory`, plus `manifest.json`.

    `symbol_prefix` picks `<prefix>__tvm_ffi__library_bin` ("" the plain name); by default
    the plain blob, the one `load_module` reads and `pack` rewrites, else the only system-lib
    blob there is.

    Every file is created exclusively through the directory's descriptor, so neither a symlink
    already in `directory` nor one swapped in for it redirects a write. A directory that is not
    empty is refused unless `force`: then only the names extract writes (`manifest.json` and
    `NNN-kind` with `.bin`, `.cubin`, `.fatbin` or `.ptx`, earlier ones included) are
    replaced, each renamed over from a fresh file. On failure only what this call created is
    removed.
    """
    held, info = open_input(library)
    found = _blob_to_extract(held, info.st_size, library, symbol_prefix)
    assert found.file_offset is not None  # _blob_to_extract picks a blob that lies in the file
    unkeepable = [f for f in found.findings if f.code in UNKEEPABLE]
    if unkeepable:
        raise InputError(
            f"{library}: the blob cannot be extracted ({unkeepable[0].code}: "
            f"{unkeepable[0].message}); see `ffitool inspect`"
        )
    payloads = {
        module.index: (
            _payload_name(module),
            PayloadSource(
                str(library),
                found.file_offset + module.payload_offset,
                module.size,
                file_identity(info),
                held,
            ),
        )
        for module in found.modules
        if module.payload_offset is not None and module.size is not None
    }
    with _writing(directory, force, _PAYLOAD_NAME) as writer:
        writer.check_target([name for name, _ in payloads.values()] + [MANIFEST_NAME])
        entries = []
        for module in found.modules:
            entry: dict[str, object] = {
                "index": module.index,
                "kind": module.kind,
                "imports": list(module.imports),
            }
            if module.index in payloads:
                name, source = payloads[module.index]
                writer.create(name, functools.partial(copy_payload, source, position=0))
                entry.update(file=name, size=module.size, sha256=module.sha256)
            entries.append(_exact_kind(entry))
        document = {"schema": MANIFEST_SCHEMA, "source": str(library), "modules": entries}
        text = (json.dumps(document, indent=2) + "\n").encode()
        writer.create(MANIFEST_NAME, lambda fd: _write_all(fd, text))
    files = tuple(directory / name for name, _ in payloads.values())
    return Extracted(directory / MANIFEST_NAME, files)


def _payload_name(module: ModuleInfo) -> str:
    """`NNN-kind` and an extension that says what the bytes are: `.cubin`, `.fatbin` or `.ptx`
    for device code a decoder read (as nvcc names such files), `.bin` for anything else."""
    return f"{module.index:03d}-{_file_safe(module.kind)}{file_extension(module.decoded)}"


def extract_cubins(library: Path, directory: Path, force: bool = False) -> tuple[Path, ...]:
    """Write each embedded cubin (`__tvm_ffi__cubin_<name>` ... `_end`) of `library` to
    `directory` as `<name>.cubin`, `.fatbin` or `.ptx` by its content (`.bin` when no decoder
    knows it), and return the files written, in name order.

    In an archive, each name is preceded by its member's (`<member>-<name>.cubin`). No manifest
    is written: the bytes are not a blob's tree, and `inspect --json` lists each cubin's
    symbols, size and sha256. Files are created as `extract` creates them (exclusively,
    through the directory's descriptor, a non-empty directory refused unless `force`, which
    replaces only the names written here).
    """
    held, info = open_input(library)
    with held.reader(library) as handle:
        inspected = inspect_open(handle, info.st_size, str(library))
    archive = len(inspected.libraries) > 1 or any(lib.member for lib in inspected.libraries)
    named: dict[str, EmbeddedCubin] = {}
    for lib in inspected.libraries:
        for cubin in lib.cubins:
            name = _cubin_file_name(cubin, lib.member if archive else None)
            if name in named:
                raise InputError(f"{library}: two embedded cubins would both be {printable(name)}")
            named[name] = cubin
    if not named:
        raise InputError(f"{library}: no embedded cubins (__tvm_ffi__cubin_<name>) to extract")
    with _writing(directory, force, None) as writer:
        writer.check_target(list(named))
        for name, cubin in sorted(named.items()):
            source = PayloadSource(
                str(library), cubin.file_offset, cubin.size, file_identity(info), held
            )
            writer.create(name, functools.partial(copy_payload, source, position=0))
    return tuple(directory / name for name in sorted(named))


def _cubin_file_name(cubin: EmbeddedCubin, member: str | None) -> str:
    stem = (
        _file_safe(cubin.name)
        if member is None
        else f"{_file_safe(member)}-{_file_safe(cubin.name)}"
    )
    return stem + file_extension(cubin.decoded)


@contextlib.contextmanager
def _writing(directory: Path, force: bool, stale: re.Pattern[str] | None) -> Iterator[_Writer]:
    """The files extract writes into `directory`, committed together at the end; on any
    failure (Ctrl-C too) none is left, nor `directory` if this call created it."""
    created, dir_fd = _open_target(directory)
    writer = _Writer(dir_fd, directory, force, stale)
    try:
        yield writer
        writer.commit()
    except BaseException as exc:
        writer.discard()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        if isinstance(exc, OSError):
            raise InputError(f"{directory}: cannot write: {exc.strerror or exc}") from None
        raise
    finally:
        os.close(dir_fd)


def _open_target(directory: Path) -> tuple[bool, int]:
    """Create `directory` if missing (True) and open it; a symlink in its place is refused."""
    created = False
    try:
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file stands where a parent directory would go
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory)
            created = True
        return created, os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(directory):
            raise InputError(
                f"{directory}: is a symbolic link; give the directory it names"
            ) from None
        raise InputError(f"{directory}: cannot write: {exc.strerror or exc}") from None


class _Writer:
    """Files created in one directory through its descriptor, removable again on failure.

    Without `force` each file is created under its own name with O_EXCL|O_NOFOLLOW: whatever
    appears there first (a symlink included) makes the extract fail rather than be written
    through. With `force` each is created the same way under a temporary name and renamed over
    its name at `commit`, which replaces a symlink itself, never the file it points to.
    """

    def __init__(
        self,
        dir_fd: int,
        directory: Path,
        force: bool,
        stale: re.Pattern[str] | None = _PAYLOAD_NAME,
    ) -> None:
        self._fd = dir_fd
        self._directory = directory
        self._force = force
        self._stale = stale
        """Names of earlier files that `commit` removes with `force` when not written again."""
        self._pending: list[tuple[str, str]] = []  # (name on disk, name it gets), for `force`
        self._created: list[str] = []  # on disk now, and not there before this call

    def check_target(self, names: list[str]) -> None:
        """Refuse a non-empty directory without `force`, and with it a directory in the way."""
        present = set(os.listdir(self._fd))
        if present and not self._force:
            raise InputError(
                f"{self._directory}: directory is not empty; use --force to replace"
                " the files extract writes"
            )
        for name in names:
            if name in present and stat.S_ISDIR(self._lstat(name).st_mode):
                raise InputError(
                    f"{self._directory / name}: cannot replace: {os.strerror(errno.EISDIR)}"
                )

    def create(self, name: str, fill: Callable[[int], None]) -> None:
        """Create `name` (or its stand-in with `force`) exclusively and let `fill` write it."""
        on_disk = f".{name}.{secrets.token_hex(6)}.tmp" if self._force else name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(on_disk, flags, 0o666, dir_fd=self._fd)
        except FileExistsError:
            raise InputError(f"{self._directory / name}: appeared while extracting") from None
        self._created.append(on_disk)
        if self._force:
            self._pending.append((on_disk, name))
        try:
            fill(fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        """With `force`, rename each file over its name, then remove stale payload files."""
        if not self._force:
            self._created = []
            return
        before = set(os.listdir(self._fd))
        for on_disk, name in self._pending:
            os.rename(on_disk, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            self._created.remove(on_disk)
            if name not in before:
                self._created.append(name)
        written = {name for _, name in self._pending}
        self._created = []  # the new extract is in place: from here on nothing is undone
        if self._stale is None:
            return
        for name in sorted(before - written):
            if self._stale.fullmatch(name) and not stat.S_ISDIR(self._lstat(name).st_mode):
                os.unlink(name, dir_fd=self._fd)

    def discard(self) -> None:
        """Remove what this call created; files that were there before stay as they were."""
        for name in self._created:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._fd)
        self._created = []

    def _lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self._fd, follow_symlinks=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _blob_to_extract(
    held: InputFile, size: int, library: Path, symbol_prefix: str | None
) -> LibraryBin:
    with held.reader(library) as handle:
        inspected = inspect_open(handle, size, str(library))
    if inspected.device is not None:
        raise InputError(
            f"{library}: this is a {inspected.format} file (device code), which holds no blob;"
            " `ffitool inspect` shows its architectures and kernels"
        )
    blobs = [
        blob
        for lib in inspected.libraries
        for blob in (lib.library_bin, *lib.system_lib_bins)
        if blob is not None and blob.layout == "tvm_ffi" and blob.file_offset is not None
    ]
    if symbol_prefix is not None:
        blobs = [blob for blob in blobs if blob.prefix == symbol_prefix]
    else:
        blobs = [blob for blob in blobs if not blob.prefix] or blobs
    if not blobs:
        name = printable(f"{symbol_prefix or ''}{LIBRARY_BIN}")
        raise InputError(f"{library}: no readable {name} to extract")
    prefixes = sorted({blob.prefix for blob in blobs})
    if len(prefixes) > 1:
        listed = ", ".join(printable(prefix) for prefix in prefixes)
        raise UsageError(
            f"{library}: blobs with the system-lib prefixes {listed}; choose one with"
            " --symbol-prefix"
        )
    return blobs[0]  # in an archive, the first member's


def read_manifest(path: Path) -> list[ExistingModule]:
    """The modules a manifest describes, each file checked against its size and sha256.

    A manifest is read like a payload: a regular file (a FIFO or device is refused without
    blocking), at most MANIFEST_MAX_BYTES, nested at most MANIFEST_MAX_DEPTH levels, every
    field of the expected type. Its files are opened through its folder's descriptor one
    component at a time, never through a symlink, so they cannot lie outside that folder.
    """
    path = Path(path)
    try:
        folder_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        document = _load(path, folder_fd)
        if not isinstance(document, dict) or document.get("schema") != MANIFEST_SCHEMA:
            raise InputError(f"{path}: not an {MANIFEST_SCHEMA} manifest")
        _known_keys(str(path), document, _MANIFEST_KEYS)
        if not isinstance(document.get("source", ""), str):
            raise InputError(f"{path}: `source` must be a string")
        entries = document.get("modules")
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{path}: `modules` must be a non-empty list")
        modules = [
            _module(path, folder_fd, number, entry, len(entries))
            for number, entry in enumerate(entries)
        ]
        unreachable = unreachable_from([m.imports for m in modules])
        if unreachable:
            raise InputError(
                f"{path}: module(s) {listed(unreachable)} are not reachable from module 0"
                " (B206: the runtime would drop them); import them or leave them out"
            )
        return modules
    finally:
        os.close(folder_fd)


MANIFEST_MAX_BYTES = 16 << 20
"""A manifest names files, it does not hold data: 16 MiB is room for ~100k modules."""
MANIFEST_MAX_DEPTH = 16
"""A manifest nests 4 levels (document, modules, module, imports); anything far deeper is not
one, and refusing it up front keeps the JSON parser from recursing without bound."""
_MANIFEST_KEYS = frozenset({"schema", "source", "modules"})
_MODULE_KEYS = frozenset({"index", "kind", "kind_hex", "imports", "file", "size", "sha256"})
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


def _load(path: Path, folder_fd: int) -> object:
    """The manifest's JSON, read through `folder_fd` with the size and depth limits."""
    handle, size = open_regular_file(path, within=(folder_fd, path.name), follow=True)
    with handle:
        if size > MANIFEST_MAX_BYTES:
            raise InputError(f"{path}: {size} bytes; a manifest may hold at most 16 MiB")
        try:
            data = handle.read(size + 1)  # one more byte shows a file that grew meanwhile
        except OSError as exc:
            raise InputError(f"{path}: read error: {exc.strerror or exc}") from None
    if len(data) != size:
        raise InputError(f"{path}: changed while it was read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 at byte {exc.start}") from None
    if _deeper_than(text, MANIFEST_MAX_DEPTH):
        raise InputError(f"{path}: JSON nested deeper than {MANIFEST_MAX_DEPTH} levels")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: not JSON: {exc}") from None


def _deeper_than(text: str, limit: int) -> bool:
    """Whether JSON `text` nests brackets more than `limit` deep, in linear time, no recursion.

    Strings are dropped first (their brackets do not nest): without their escaped backslashes
    and quotes, every other piece between quotes is outside a string. Then each round deletes
    every innermost `[]` pair, so a pair still left after `limit` rounds lies deeper. Where the
    text is not JSON the parser stops at the first error, before any nesting this missed.
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2])
    brackets = _NOT_BRACKET.sub("", outside).translate({123: "[", 125: "]"})
    for _ in range(limit):
        brackets = brackets.replace("[]", "")
    return "[]" in brackets


def _known_keys(where: str, entry: dict[str, object], keys: frozenset[str]) -> None:
    unknown = sorted(set(entry) - keys)
    if unknown:
        raise InputError(f"{where}: unknown key `{printable(unknown[0])}`")


def _text(where: str, field: str, value: object) -> str:
    """A string field that UTF-8 can hold (JSON lets `\\ud800` through, a blob cannot)."""
    if not isinstance(value, str):
        raise InputError(f"{where}: `{field}` must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{where}: `{field}` holds a lone surrogate, which UTF-8 cannot encode"
        ) from None
    return value


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _module(path: Path, folder_fd: int, number: int, entry: object, count: int) -> ExistingModule:
    where = f"{path}: module {number}"
    if not isinstance(entry, dict) or not _index(entry.get("index")) or entry["index"] != number:
        raise InputError(f"{where}: entries must be objects listed in index order")
    _known_keys(where, entry, _MODULE_KEYS)
    kind = _text(where, "kind", entry.get("kind"))
    if "kind_hex" in entry:
        kind = _kind_from_hex(where, entry["kind_hex"])
    imports = entry.get("imports", [])
    if not isinstance(imports, list) or not all(_index(i) and 0 <= i < count for i in imports):
        raise InputError(f"{where}: `imports` must list module indices below {count}")
    if kind == LIB_KIND:
        if "file" in entry or "size" in entry or "sha256" in entry:
            raise InputError(f"{where}: `_lib` has no payload file")
        return ExistingModule(kind, None, tuple(imports))
    if not kind:
        raise InputError(f"{where}: `kind` cannot be empty")
    name = _text(where, "file", entry.get("file"))
    parts = Path(name).parts
    if not parts or "\0" in name or Path(name).is_absolute() or ".." in parts:
        raise InputError(f"{where}: `file` must be a path inside the manifest's folder")
    expected = entry.get("size")
    if expected is not None and not (_index(expected) and expected >= 0):
        raise InputError(f"{where}: `size` must be a byte count")
    want = entry.get("sha256")
    if want is not None and not (isinstance(want, str) and _SHA256.fullmatch(want)):
        raise InputError(f"{where}: `sha256` must be 64 lowercase hex digits")
    payload = path.parent / name
    held, info = _open_inside(folder_fd, payload, parts)
    size = info.st_size
    shown = printable(str(payload))
    digest = None
    if want is not None:
        with held.reader(shown) as handle:
            digest = file_sha256(handle, 0, size)
    if size == 0:
        raise InputError(f"{shown}: empty payload; the runtime rejects empty modules")
    if expected is not None and expected != size:
        raise InputError(f"{shown}: {size} bytes, the manifest says {expected}")
    if digest is not None and digest != want:
        raise InputError(f"{shown}: sha256 differs from the manifest's")
    source = PayloadSource(str(payload), 0, size, file_identity(info), held)
    return ExistingModule(kind, source, tuple(imports))


def _open_inside(
    folder_fd: int, payload: Path, parts: tuple[str, ...]
) -> tuple[InputFile, os.stat_result]:
    """Open a manifest's file below its folder, one component at a time, following no symlink.

    Each directory on the way is opened relative to the one before with O_NOFOLLOW, so a
    symlink anywhere on the path (including one swapped in while this runs) is refused rather
    than followed out of the folder. The file's descriptor is held: it is checked, hashed and
    copied through that one.
    """
    shown = printable(str(payload))
    fd = folder_fd
    try:
        for part in parts[:-1]:
            _refuse_symlink(fd, part, shown)
            try:
                inner = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError as exc:
                raise InputError(f"{shown}: cannot open: {exc.strerror or exc}") from None
            if fd != folder_fd:
                os.close(fd)
            fd = inner
        _refuse_symlink(fd, parts[-1], shown)
        return open_input(shown, within=(fd, parts[-1]), follow=False)
    finally:
        if fd != folder_fd:
            os.close(fd)


def _refuse_symlink(dir_fd: int, name: str, shown: str) -> None:
    """Name the problem when the path goes through a symlink (O_NOFOLLOW then guards a swap)."""
    with contextlib.suppress(OSError):  # a missing name is reported by the open that follows
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise InputError(
                f"{shown}: goes through a symbolic link; a manifest names only files"
                " inside its folder"
            )


def _exact_kind(entry: dict[str, object]) -> dict[str, object]:
    """A kind that is not UTF-8 (B208) is written as JSON output writes it: `kind` escaped
    (`k\\xff`) and its bytes in `kind_hex`, which the reader takes, so that `extract` then
    `pack --manifest` keeps the exact bytes."""
    exact = with_exact_bytes(entry, "kind")
    if exact is not entry:
        exact["kind"] = unsurrogated(str(exact["kind"]))
    return exact


def _kind_from_hex(where: str, value: object) -> str:
    """The kind whose exact bytes `kind_hex` spells; they become text as the readers keep
    bytes that are not UTF-8 (surrogateescape)."""
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise InputError(f"{where}: `kind_hex` must be an even number of lowercase hex digits")
    return bytes.fromhex(value).decode("utf-8", "surrogateescape")


def _file_safe(kind: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", kind)[:64] or "module"
