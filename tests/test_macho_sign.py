"""Ad hoc Mach-O code signatures: re-signing reproduces the linker's bytes, an independent
recomputation (struct and hashlib here, none of ffitool's code) agrees with every field and
page hash of a fresh signature, and `signature_problems` names each broken property, also of
hostile blobs, without an exception or a large allocation.

No independent verifier of Mach-O signatures installs here (rcodesign is neither on PyPI nor
in Debian, LIEF exposes the raw bytes only), so the recomputation below is the second opinion;
macholib and llvm-objdump check the load command a test adds.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from conftest import FIXTURES, ffitool, require_tool

from ffitool.formats.macho.sign import (
    AdhocSignature,
    SignatureError,
    build_signature,
    resign_parameters,
    signature_problems,
    signature_size,
)

MACHO = FIXTURES / "macho"
ARM64 = MACHO / "libffi_macho.arm64.dylib"
X86_64 = MACHO / "libffi_macho.x86_64.dylib"
UNIVERSAL = MACHO / "libffi_macho.universal.dylib"

CPU_ARM64 = 0x0100000C
LC_SEGMENT_64 = 0x19
LC_CODE_SIGNATURE = 0x1D


def fat_slices(data: bytes) -> dict[int, tuple[int, int]]:
    """cputype -> (offset, size) of each slice of a universal file."""
    count = struct.unpack_from(">I", data, 4)[0]
    slices = {}
    for index in range(count):
        cputype, _, offset, size, _ = struct.unpack_from(">iiIII", data, 8 + 20 * index)
        slices[cputype] = (offset, size)
    return slices


def commands(image: bytes) -> dict:
    """What the tests need from a thin image's load commands, parsed here with struct."""
    _, cputype, _, filetype, ncmds, sizeofcmds, _, _ = struct.unpack_from("<IiiIIIII", image)
    found: dict = {
        "cputype": cputype,
        "filetype": filetype,
        "ncmds": ncmds,
        "sizeofcmds": sizeofcmds,
    }
    at = 32
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", image, at)
        if cmd == LC_SEGMENT_64:
            name, _, _, fileoff, filesize = struct.unpack_from("<16sQQQQ", image, at + 8)
            found[name.rstrip(b"\0").decode()] = (at, fileoff, filesize)
        elif cmd == LC_CODE_SIGNATURE:
            found["signature"] = (at, *struct.unpack_from("<II", image, at + 8))
        at += cmdsize
    return found


def existing_signature(image: bytes) -> bytes:
    _, dataoff, datasize = commands(image)["signature"]
    return image[dataoff : dataoff + datasize]


def parameters(image: bytes, existing: bytes | None, identifier: bytes = b"") -> AdhocSignature:
    found = commands(image)
    return resign_parameters(
        existing,
        identifier=identifier,
        text_segment=found["__TEXT"][1:],
        executable=False,
        cputype=found["cputype"],
    )


def sign_in_place(path: Path, start: int, signature: AdhocSignature, code_limit: int) -> bytes:
    with open(path, "rb") as file:
        return build_signature(file.fileno(), start, code_limit, signature)


def problems(path: Path, start: int = 0, size: int | None = None) -> list[str]:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size - start if size is None else size
        return signature_problems(file.fileno(), start, size)


def with_signature(image: bytes, signature: AdhocSignature, path: Path) -> bytes:
    """`image` written to `path` with `signature` computed into it: an existing
    LC_CODE_SIGNATURE is reused at its offset, else one is added and the signature appended
    (16-aligned) at the end of __LINKEDIT, which grows to cover it."""
    found = commands(image)
    data = bytearray(image)
    if "signature" in found:
        at, dataoff, _ = found["signature"]
    else:
        at = 32 + found["sizeofcmds"]
        dataoff = -(-len(image) // 16) * 16
        data[at : at + 16] = struct.pack("<IIII", LC_CODE_SIGNATURE, 16, 0, 0)
        struct.pack_into("<II", data, 16, found["ncmds"] + 1, found["sizeofcmds"] + 16)
    datasize = signature_size(signature, dataoff)
    struct.pack_into("<II", data, at + 8, dataoff, datasize)
    linkedit_at, linkedit_off, _ = found["__LINKEDIT"]
    filesize = dataoff + datasize - linkedit_off
    struct.pack_into(
        "<QQQ", data, linkedit_at + 32, -(-filesize // 16384) * 16384, linkedit_off, filesize
    )
    data = data[:dataoff].ljust(dataoff, b"\0")
    path.write_bytes(bytes(data))
    blob = sign_in_place(path, 0, signature, dataoff)
    assert len(blob) == datasize
    path.write_bytes(bytes(data) + blob)
    return path.read_bytes()


def check_independently(
    image: bytes, blob: bytes, identifier: bytes, flags: int, page_size: int
) -> None:
    """Every code directory field and page hash of `blob`, the signature of thin `image`,
    recomputed from the image's bytes with struct and hashlib."""
    found = commands(image)
    _, dataoff, datasize = found["signature"]
    assert len(blob) == datasize
    magic, length, count = struct.unpack_from(">III", blob)
    assert (magic, count) == (0xFADE0CC0, 1)
    assert length <= datasize < length + 16
    slot, offset = struct.unpack_from(">II", blob, 12)
    assert slot == 0
    fields = struct.unpack_from(">IIIIIIIIIBBBBIIIIQQQQ", blob, offset)
    (cd_magic, cd_length, version, cd_flags, hash_offset, ident_offset, special, slots, limit) = (
        fields[:9]
    )
    hash_size, hash_type, platform, page_shift = fields[9:13]
    assert (cd_magic, version, cd_flags) == (0xFADE0C02, 0x20400, flags)
    assert (ident_offset, special, limit) == (88, 0, dataoff)
    assert (hash_size, hash_type, platform, 1 << page_shift) == (32, 2, 0, page_size)
    assert fields[13:18] == (0, 0, 0, 0, 0)
    _, text_off, text_size = found["__TEXT"]
    assert fields[18:21] == (text_off, text_size, 0)
    assert blob[offset + 88 : offset + 88 + len(identifier) + 1] == identifier + b"\0"
    assert slots == -(-dataoff // page_size)
    assert hash_offset >= 88 + len(identifier) + 1
    assert cd_length == hash_offset + 32 * slots == length - offset
    for page in range(slots):
        stored = blob[offset + hash_offset + 32 * page :][:32]
        chunk = image[page * page_size : min((page + 1) * page_size, dataoff)]
        assert stored == hashlib.sha256(chunk).digest(), page


# ----------------------------------------------------------------------- reproduction


@pytest.mark.parametrize("where", ["thin", "universal"])
def test_resigning_an_unmodified_zig_dylib_reproduces_the_linkers_bytes(where: str) -> None:
    if where == "thin":
        path, start = ARM64, 0
        size = ARM64.stat().st_size
    else:
        path = UNIVERSAL
        start, size = fat_slices(UNIVERSAL.read_bytes())[CPU_ARM64]
    image = path.read_bytes()[start : start + size]
    existing = existing_signature(image)
    signature = parameters(image, existing, identifier=b"ignored for a signed slice")
    assert signature.identifier == b"libffi_macho.arm64.dylib"
    assert (signature.page_size, signature.flags, signature.alignment) == (16384, 0x20002, 8)
    dataoff = commands(image)["signature"][1]
    assert (dataoff, len(existing)) == (49920, 264)
    assert signature_size(signature, dataoff) == 264
    assert sign_in_place(path, start, signature, dataoff) == existing


@pytest.mark.parametrize(
    ("name", "page_size", "layout"),
    [
        ("libmany.arm64.dylib", 16384, (16, 1, 1)),  # zig; its 512 bytes read as 16-aligned
        ("libffi_macho.lld.arm64.dylib", 4096, (16, 8, 16)),  # ld64.lld-16
    ],
)
def test_resigning_other_linkers_output_reproduces_their_bytes(
    name: str, page_size: int, layout: tuple[int, int, int]
) -> None:
    """lld puts the code directory at an 8-aligned offset and pads the identifier so the
    hashes start 16-aligned; the parameters read that back from the existing signature."""
    image = (MACHO / name).read_bytes()
    existing = existing_signature(image)
    signature = parameters(image, existing)
    assert (signature.page_size, signature.flags) == (page_size, 0x20002)
    alignments = (signature.alignment, signature.directory_alignment, signature.hash_alignment)
    assert alignments == layout
    dataoff = commands(image)["signature"][1]
    assert sign_in_place(MACHO / name, 0, signature, dataoff) == existing
    assert problems(MACHO / name) == []


def test_fresh_signature_of_a_signed_arm64_dylib_recomputed_independently(tmp_path: Path) -> None:
    image = ARM64.read_bytes()
    signature = parameters(image, existing_signature(image))
    signed = with_signature(image, signature, tmp_path / "arm64.dylib")
    assert signed == image  # nothing moved, and the signature is the linker's
    check_independently(
        signed, existing_signature(signed), b"libffi_macho.arm64.dylib", 0x20002, 16384
    )


def test_unsigned_x86_64_dylib_signed_and_recomputed_independently(tmp_path: Path) -> None:
    image = X86_64.read_bytes()
    assert "signature" not in commands(image)
    signature = parameters(image, None, identifier=b"libffi_macho.x86_64.dylib")
    assert (signature.page_size, signature.flags, signature.blobs) == (4096, 0x2, ())
    path = tmp_path / "x86_64.dylib"
    signed = with_signature(image, signature, path)
    after_commands = 32 + commands(image)["sizeofcmds"] + 16
    assert signed[after_commands : len(image)] == image[after_commands:]
    check_independently(signed, existing_signature(signed), b"libffi_macho.x86_64.dylib", 0x2, 4096)
    assert problems(path) == []
    # Two other parsers see the new load command where the signature is.
    from macholib.MachO import MachO

    header = MachO(str(path)).headers[0]
    command = [c for lc, c, _ in header.commands if lc.cmd == LC_CODE_SIGNATURE]
    dataoff, datasize = commands(signed)["signature"][1:]
    assert [(c.dataoff, c.datasize) for c in command] == [(dataoff, datasize)]
    dump = subprocess.run(
        [require_tool("llvm-objdump"), "--macho", "--private-headers", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert f"dataoff {dataoff}\n datasize {datasize}\n" in dump


# ------------------------------------------------------------ what each input gets


def superblob(*blobs: tuple[int, bytes]) -> bytes:
    """A super blob of (slot, blob) entries, laid out as codesign lays them."""
    at = 12 + 8 * len(blobs)
    index = b""
    for slot, blob in blobs:
        index += struct.pack(">II", slot, at)
        at += len(blob)
    return struct.pack(">III", 0xFADE0CC0, at, len(blobs)) + index + b"".join(b for _, b in blobs)


def linker_directory() -> bytes:
    existing = existing_signature(ARM64.read_bytes())
    return existing[20 : 20 + struct.unpack_from(">I", existing, 24)[0]]


REQUIREMENTS = struct.pack(">III", 0xFADE0C01, 12, 0)
EMPTY_WRAPPER = struct.pack(">II", 0xFADE0B01, 8)


def test_codesign_made_ad_hoc_signature_keeps_its_blobs_and_room(tmp_path: Path) -> None:
    """The shape `codesign -s -` writes (requirements, empty CMS wrapper, 18,000 bytes of
    room): CS_LINKER_SIGNED cleared, blobs kept, the requirements hash in special slot -2."""
    directory = bytearray(linker_directory())
    struct.pack_into(">I", directory, 12, 0x2)
    blob = superblob((0, bytes(directory)), (2, REQUIREMENTS), (0x10000, EMPTY_WRAPPER))
    existing = blob.ljust(-(-len(blob) // 16) * 16 + 18000, b"\0")
    image = ARM64.read_bytes()
    signature = parameters(image, existing)
    assert signature.flags == 0x2 and signature.identifier == b"libffi_macho.arm64.dylib"
    assert signature.blobs == ((2, REQUIREMENTS), (0x10000, EMPTY_WRAPPER))
    assert (signature.reserve, signature.alignment) == (18000, 16)
    path = tmp_path / "adhoc.dylib"
    signed = with_signature(image, signature, path)
    assert problems(path) == []
    new = existing_signature(signed)
    magic, length, count = struct.unpack_from(">III", new)
    assert (magic, count, len(new)) == (0xFADE0CC0, 3, -(-length // 16) * 16 + 18000)
    index = [struct.unpack_from(">II", new, 12 + 8 * n) for n in range(3)]
    assert [slot for slot, _ in index] == [0, 2, 0x10000]
    cd = index[0][1]
    special, _ = struct.unpack_from(">II", new, cd + 24)
    hash_offset = struct.unpack_from(">I", new, cd + 16)[0]
    assert special == 2
    slot2 = new[cd + hash_offset - 64 : cd + hash_offset - 32]
    slot1 = new[cd + hash_offset - 32 : cd + hash_offset]
    assert (slot2, slot1) == (hashlib.sha256(REQUIREMENTS).digest(), bytes(32))
    assert new[index[1][1] : index[1][1] + 12] == REQUIREMENTS
    assert new[index[2][1] : index[2][1] + 8] == EMPTY_WRAPPER
    # A requirements blob that no longer matches its special slot is a problem.
    broken = bytearray(signed)
    broken[commands(signed)["signature"][1] + index[1][1] + 11] ^= 1
    path.write_bytes(bytes(broken))
    assert problems(path) == [f"code directory at {cd}: the hash of blob slot 2 does not match"]


def test_certificate_signature_is_replaced_by_a_bare_ad_hoc_one() -> None:
    """A CMS signature with content: ad hoc, CS_ADHOC only, identifier and page size kept,
    requirements, entitlements and the CMS blob dropped (none of them holds for ad hoc)."""
    directory = bytearray(linker_directory())
    struct.pack_into(">I", directory, 12, 0x10000)  # CS_RUNTIME, as a Developer ID build has
    entitlements = struct.pack(">II", 0xFADE7171, 16) + b"<dict/>\0"
    cms = struct.pack(">II", 0xFADE0B01, 24) + bytes(16)
    existing = superblob(
        (0, bytes(directory)), (2, REQUIREMENTS), (5, entitlements), (0x10000, cms)
    )
    signature = parameters(ARM64.read_bytes(), existing)
    assert signature == AdhocSignature(
        b"libffi_macho.arm64.dylib", 16384, 0x2, (0, 6664, 0), alignment=8
    )


def test_executable_and_unsupported_cpu() -> None:
    signature = resign_parameters(
        None, identifier=b"tool", text_segment=(0, 16384), executable=True, cputype=CPU_ARM64
    )
    assert signature.exec_segment == (0, 16384, 1)
    with pytest.raises(ValueError, match="CPU type 0x7"):
        resign_parameters(None, identifier=b"x", text_segment=(0, 1), executable=False, cputype=7)


# ------------------------------------------------------------------- verification


def test_fixtures_verify() -> None:
    assert problems(ARM64) == []
    start, size = fat_slices(UNIVERSAL.read_bytes())[CPU_ARM64]
    assert problems(UNIVERSAL, start, size) == []
    assert problems(X86_64) == ["the slice has no LC_CODE_SIGNATURE"]


def mutated(tmp_path: Path, edit) -> list[str]:
    data = bytearray(ARM64.read_bytes())
    edit(data, commands(bytes(data)))
    path = tmp_path / "mutated.dylib"
    path.write_bytes(bytes(data))
    return problems(path)


CD = 49920 + 20
"""Where the arm64 fixture's code directory starts in the file."""


def test_flipped_page_byte(tmp_path: Path) -> None:
    def flip(data: bytearray, _: dict) -> None:
        data[16384 + 3] ^= 0xFF  # page 1 (of 4, 16 KiB pages)

    assert mutated(tmp_path, flip) == [
        "code directory at 20: the hash of page 1 (of 4) does not match"
    ]


def test_wrong_code_limit(tmp_path: Path) -> None:
    def limit(data: bytearray, _: dict) -> None:
        struct.pack_into(">I", data, CD + 32, 49920 - 16)

    assert mutated(tmp_path, limit) == [
        "code directory at 20: codeLimit 49904 is not the signature's offset 49920"
    ]


def test_truncated_blob(tmp_path: Path) -> None:
    def truncate(data: bytearray, found: dict) -> None:
        at = found["signature"][0]
        struct.pack_into("<I", data, at + 12, 200)
        linkedit_at = found["__LINKEDIT"][0]
        struct.pack_into("<Q", data, linkedit_at + 48, 49920 + 200 - 49152)

    assert mutated(tmp_path, truncate) == ["super blob length 261 exceeds its 200 bytes"]


def test_bad_magic(tmp_path: Path) -> None:
    def magic(data: bytearray, _: dict) -> None:
        data[49920] ^= 0x01

    assert mutated(tmp_path, magic) == ["bad super blob magic 0xfbde0cc0"]


def test_signature_not_at_the_end_of_linkedit(tmp_path: Path) -> None:
    def grow(data: bytearray, found: dict) -> None:
        linkedit_at = found["__LINKEDIT"][0]
        struct.pack_into("<Q", data, linkedit_at + 48, 1032 + 16)
        data.extend(bytes(16))

    assert mutated(tmp_path, grow) == [
        "the signature ends at 50184, not at the end of __LINKEDIT (50200)",
        "code directory at 20: the hash of page 0 (of 4) does not match",  # the edited header
    ]


def test_inspect_reports_a_broken_signature_in_one_line(tmp_path: Path) -> None:
    """The reader classifies signatures with the same parser: a bad magic is one error line."""
    data = bytearray(ARM64.read_bytes())
    data[49920] ^= 0x01
    path = tmp_path / "bad.dylib"
    path.write_bytes(bytes(data))
    result = ffitool("inspect", str(path))
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == (
        f"ffitool: error: {path}: malformed Mach-O: code signature:"
        " bad super blob magic 0xfbde0cc0\n"
    )


HOSTILE = {
    "index count": (49920 + 8, ">I", 0xFFFFFFFF, "super blob index of 4294967295 entries"),
    "blob offset": (49920 + 16, ">I", 0xFFFFFFF0, "starts past the super blob"),
    "super blob length": (49920 + 4, ">I", 0xFFFFFFFF, "super blob length 4294967295"),
    "blob length": (CD + 4, ">I", 0xFFFFFFFF, "has a bad length 4294967295"),
    "code slots": (CD + 28, ">I", 0xFFFFFFFF, "4294967295 code slots"),
    "special slots": (CD + 24, ">I", 0x7FFFFFFF, "2147483647 special"),
    "hash offset": (CD + 16, ">I", 0xFFFFFF00, "at 4294967040"),
    "identifier offset": (CD + 20, ">I", 0xFFFFFFFF, "identifier is not a string"),
    "hash type": (CD + 37, ">B", 9, "unknown hash type 9"),
    "page size": (CD + 39, ">B", 63, "unsupported page size 2**63"),
    "dataoff": (None, "<I", 0xFFFFFFF0, "extends past the slice"),
    "sizeofcmds": (20, "<I", 0xFFFFFFFF, "load commands claim 4294967295 bytes"),
    "ncmds": (16, "<I", 0xFFFFFFFF, "4294967295 load commands cannot fit in"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_blob_gives_a_problem_not_an_exception(tmp_path: Path, name: str) -> None:
    at, layout, value, expected = HOSTILE[name]

    def lie(data: bytearray, found: dict) -> None:
        struct.pack_into(layout, data, found["signature"][0] + 8 if at is None else at, value)

    tracemalloc.start()
    try:
        found = mutated(tmp_path, lie)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(found) == 1 and expected in found[0], found
    assert peak < 1 << 20  # the fixture is 50 KB: nothing sized by a lying field
    if at is not None and at >= 49920 and name not in ("hash type", "page size"):
        data = ARM64.read_bytes()
        blob = bytearray(existing_signature(data))
        struct.pack_into(layout, blob, at - 49920, value)
        with pytest.raises(SignatureError):
            parameters(data, bytes(blob))


# ----------------------------------------------------------------------- every other problem


def test_a_file_that_ends_inside_the_signature(tmp_path: Path) -> None:
    """The slice is stated longer than the file now is (it shrank): no exception."""
    path = tmp_path / "short.dylib"
    path.write_bytes(ARM64.read_bytes()[:-10])
    assert problems(path, 0, ARM64.stat().st_size) == ["the file ends inside the signature"]


def test_a_signature_without_a_code_directory(tmp_path: Path) -> None:
    def requirements_only(data: bytearray, _: dict) -> None:
        struct.pack_into(">I", data, 49920 + 12, 2)  # the one blob's slot: requirements

    assert mutated(tmp_path, requirements_only) == ["it has no code directory"]


def test_a_code_directory_short_of_pages(tmp_path: Path) -> None:
    def slots(data: bytearray, _: dict) -> None:
        struct.pack_into(">I", data, CD + 28, 3)

    assert mutated(tmp_path, slots) == ["code directory at 20: 3 code slots for 4 pages"]


def test_a_short_code_signature_command(tmp_path: Path) -> None:
    """LC_CODE_SIGNATURE (the last command, at 1600) cut to its cmd and cmdsize."""

    def cut(data: bytearray, found: dict) -> None:
        struct.pack_into("<II", data, 1600, LC_CODE_SIGNATURE, 8)
        struct.pack_into("<I", data, 20, found["sizeofcmds"] - 8)

    assert mutated(tmp_path, cut) == [
        "the slice's load commands: load command 15 is too short (8 bytes)"
    ]


def test_signing_needs_the_bytes_it_covers(tmp_path: Path) -> None:
    """A code limit past the end of the file (it shrank) or past 32 bits is refused."""
    image = ARM64.read_bytes()
    signature = parameters(image, existing_signature(image))
    with pytest.raises(OSError, match="the file ends before byte 65536 that the signature"):
        sign_in_place(ARM64, 0, signature, 65536)
    with pytest.raises(ValueError, match="code limit 4294967296 is out of the 32-bit range"):
        signature_size(signature, 1 << 32)


def test_the_signature_parser_refuses_what_it_cannot_read():
    """The super blob and code directory refusals, on the bytes themselves: each a
    SignatureError whose message says what was wrong (the reader shows it, the signer refuses
    to re-sign)."""
    from ffitool.formats.macho import codesign

    with pytest.raises(codesign.SignatureError, match=r"^it is too short \(4 bytes\) for a super"):
        codesign.blobs(b"\xfa\xde\x0c\xc0")
    data = bytes(64)
    wrong = codesign.Blob(0, 12, 0xFADE0C01, 40)
    with pytest.raises(codesign.SignatureError, match=r"^slot 0x0 holds 0xfade0c01, not a code"):
        codesign.code_directory(data, wrong)
    short = codesign.Blob(0, 12, codesign.CSMAGIC_CODEDIRECTORY, 20)
    with pytest.raises(codesign.SignatureError, match=r"^code directory is too short \(20 bytes\)"):
        codesign.code_directory(data, short)
