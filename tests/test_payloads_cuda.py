"""The cubin and fatbin decoders against NVIDIA's own tools: nvcc builds, cuobjdump reads.

nvcc and cuobjdump come from the PyPI wheels `nvidia-cuda-nvcc` and `nvidia-cuda-cuobjdump`
(the `test` extra pins them); they run on a CPU machine. Kernels are compiled once per session
for several architectures, with and without -G, relocatable, and into fatbins with PTX,
compressed or not. What ffitool says of each must be what cuobjdump says: the architectures of
`--list-elf --list-ptx`, and the header line and ENTRY functions of `-elf`.

Then damaged copies of those files: every decoder ends in a result or a PayloadError, never
another exception, with bounded CPU time.
"""

from __future__ import annotations

import json
import random
import re
import resource
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import nvidia_tool, require_tool

from ffitool.payloads import PayloadError, decode_payload
from ffitool.payloads.cubin import CubinDetails, decode_cubin
from ffitool.payloads.fatbin import FatbinDetails, decode_fatbin

# The tests on nvcc's builds are slow-marked: building the 12 files takes nvcc about 4 s of CPU
# once per pytest-xdist worker (cuobjdump then about 0.01 s a call). The hostile files made here
# in Python are in the fast loop.

SOURCE = """
namespace ns {
template <typename T> __global__ void scale(T* x, T a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
template __global__ void scale<float>(float*, float, int);
template __global__ void scale<double>(double*, double, int);
}  // namespace ns
extern "C" __global__ void add(float* a, const float* b, int n) {
  int i = threadIdx.x;
  if (i < n) a[i] += b[i];
}
__device__ float helper(float x) { return x * x; }
__global__ void square(float* a) { a[threadIdx.x] = helper(a[threadIdx.x]); }
"""

CUBINS = {
    "sm_80": ["-arch=sm_80"],
    "sm_90a": ["-arch=sm_90a"],
    "sm_90a-debug": ["-arch=sm_90a", "-G"],
    "sm_90a-rdc": ["-arch=sm_90a", "-rdc=true"],
    "sm_100": ["-arch=sm_100"],
    "sm_100a": ["-arch=sm_100a"],
    "sm_100f": ["-arch=sm_100f"],
    "sm_103a": ["-arch=sm_103a"],
}
FATBINS = {
    # PTX is compressed by default (nvcc 13): the cubins are not.
    "multi": ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
              "-gencode=arch=compute_100,code=compute_100"],
    "compressed": ["-gencode=arch=compute_80,code=sm_80",
                   "-gencode=arch=compute_90,code=compute_90", "-Xfatbin=-compress-all"],
    "lz4-all": ["-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_90,code=compute_90", "--compress-mode=speed",
                "-Xfatbin=-compress-all"],
    "compress-speed": ["-gencode=arch=compute_80,code=sm_80",
                       "-gencode=arch=compute_90,code=compute_90", "--compress-mode=speed"],
    "family-debug": ["-G", "-gencode=arch=compute_100f,code=sm_100f",
                     "-gencode=arch=compute_103a,code=sm_103a",
                     "-gencode=arch=compute_100a,code=compute_100a", "-Xfatbin=-compress=false"],
}  # fmt: skip


class Builds:
    """The files built for the session, and cuobjdump's view of them (run on demand, once)."""

    def __init__(self, directory: Path, cuobjdump: Path) -> None:
        self.directory = directory
        self.cuobjdump = cuobjdump
        self.cpu_seconds = 0.0
        self._outputs: dict[tuple[str, str], str] = {}

    def path(self, name: str) -> Path:
        return self.directory / name

    def cuobjdump_output(self, name: str, *options: str) -> str:
        key = (name, " ".join(options))
        if key not in self._outputs:
            run = subprocess.run(
                [str(self.cuobjdump), *options, str(self.path(name))],
                capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            self._outputs[key] = run.stdout
        return self._outputs[key]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    require_tool("gcc")  # nvcc preprocesses with the host compiler
    nvcc, cuobjdump = nvidia_tool("nvcc"), nvidia_tool("cuobjdump")
    directory = tmp_path_factory.mktemp("cuda")
    (directory / "kernels.cu").write_text(SOURCE)
    started = _children_cpu()
    jobs = [(f"{name}.cubin", ["-cubin", *flags]) for name, flags in CUBINS.items()]
    jobs += [(f"{name}.fatbin", ["-fatbin", *flags]) for name, flags in FATBINS.items()]
    for output, flags in jobs:
        subprocess.run(
            [str(nvcc), *flags, "kernels.cu", "-o", output],
            cwd=directory, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
    result = Builds(directory, cuobjdump)
    result.cpu_seconds = _children_cpu() - started
    return result


_LISTED = re.compile(r"^(ELF|PTX) file\s+\d+: .*\.(sm_\w+)\.(?:cubin|ptx)$", re.M)
_ELF_LINE = re.compile(
    r"^64-bit ELF: type=(\w+), ABI=(\d+), sm=(\w+), toolkit=([\d.]+), flags=(\w+)$"
)
_ENTRY = re.compile(r"^\s*\S+\s+\S+\s+(\S+)\s+FUNC\s+\S+\s+\S+\s+ENTRY\s+\S+\s+(\S+)$")


def listed(output: str) -> list[tuple[str, str]]:
    """`cuobjdump --list-elf --list-ptx`: (kind, architecture) in the order of the file."""
    return [(kind.lower(), arch) for kind, arch in _LISTED.findall(output)]


def elf_blocks(output: str) -> list[tuple[tuple[str, ...], list[tuple[str, int]]]]:
    """`cuobjdump -elf`: per ELF file, its header fields and the ENTRY functions of `.symtab`."""
    blocks: list[tuple[tuple[str, ...], list[tuple[str, int]]]] = []
    section = ""
    for line in output.splitlines():
        header = _ELF_LINE.match(line)
        if header:
            blocks.append((header.groups(), []))
        elif line.startswith(".section"):
            section = line.split()[1]
        elif section == ".symtab" and blocks and (entry := _ENTRY.match(line)):
            blocks[-1][1].append((entry.group(2), int(entry.group(1), 0)))
    return blocks


def decoded(builds: Builds, name: str, decoder):
    return decoder(memoryview(builds.path(name).read_bytes()))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CUBINS))
def test_cubin_matches_cuobjdump(builds, name):
    details = decoded(builds, f"{name}.cubin", decode_cubin)
    [(header, kernels)] = elf_blocks(builds.cuobjdump_output(f"{name}.cubin", "-elf"))
    elf_type, abi, sm, toolkit, flags = header
    assert details.arch == f"sm_{sm}"
    assert (details.abi_version, details.toolkit, details.e_flags) == (
        int(abi),
        toolkit,
        int(flags, 0),
    )
    assert details.relocatable == (elf_type == "ET_REL")
    assert sorted((k.name, k.size) for k in details.kernels) == sorted(kernels)
    assert details.kernel_count == len(kernels) == 4
    listing = listed(builds.cuobjdump_output(f"{name}.cubin", "--list-elf", "--list-ptx"))
    assert listing == [("elf", details.arch)]


@pytest.mark.slow
def test_cubin_traits(builds):
    traits = {
        name: (d.debug, d.relocatable, d.built_for)
        for name in CUBINS
        for d in [decoded(builds, f"{name}.cubin", decode_cubin)]
    }
    assert traits["sm_90a-debug"] == (True, False, "sm_90a")
    assert traits["sm_90a-rdc"] == (False, True, "sm_90a")
    assert traits["sm_80"] == (False, False, "sm_80")
    # cuobjdump names a family build by its base architecture; the toolkit note says what it was.
    assert traits["sm_100f"] == (False, False, "sm_100f")
    summary = decoded(builds, "sm_100f.cubin", decode_cubin).summary()
    assert summary == "cubin sm_100 (built for sm_100f), toolkit 13.5, 4 kernels"


# (EI_OSABI, EI_ABIVERSION, e_flags, e_version): the old layout (ELFOSABI_CUDA, the SM in the low
# byte, 0x800 for `a`, the toolkit in e_version) and the new one (the SM from bit 8 on).
HEADERS = [
    (0x33, 7, 0x5A0D5A, 124),
    (0x33, 7, 0x500550, 118),
    (0x33, 7, 0x670D67, 128),
    (0x41, 8, 0x6006502, 1),
    (0x41, 8, 0x6007802, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize(("osabi", "abi", "flags", "version"), HEADERS)
def test_both_e_flags_layouts_read_as_cuobjdump_reads_them(
    builds, tmp_path, osabi, abi, flags, version
):
    data = bytearray(builds.path("sm_100.cubin").read_bytes())
    data[7], data[8] = osabi, abi
    struct.pack_into("<I", data, 20, version)
    struct.pack_into("<I", data, 48, flags)
    (tmp_path / "patched.cubin").write_bytes(data)
    run = subprocess.run(
        [str(builds.cuobjdump), "-elf", str(tmp_path / "patched.cubin")],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    # cuobjdump writes the old layout's header line in another form.
    sm, toolkit = re.search(r"sm=(\w+), toolkit=([\d.]+)", run.stdout).groups()
    details = decode_cubin(memoryview(data))
    assert details.arch == f"sm_{sm}"
    expected = toolkit if "." in toolkit else f"{int(toolkit) // 10}.{int(toolkit) % 10}"
    assert details.toolkit == expected


def elf_arch(entry) -> str:
    """The architecture cuobjdump names an ELF entry by: the cubin's own (a family build is
    named by its base architecture), or the header's when the cubin is compressed."""
    if entry.details is not None:
        return entry.details.arch
    return entry.arch.removesuffix("f")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FATBINS))
def test_fatbin_matches_cuobjdump(builds, name):
    details = decoded(builds, f"{name}.fatbin", decode_fatbin)
    assert isinstance(details, FatbinDetails)
    ours = [(e.kind, elf_arch(e) if e.kind == "elf" else e.arch) for e in details.entries]
    assert ours == listed(builds.cuobjdump_output(f"{name}.fatbin", "--list-elf", "--list-ptx"))
    assert details.entry_count == len(details.entries)
    blocks = elf_blocks(builds.cuobjdump_output(f"{name}.fatbin", "-elf"))
    elves = [e for e in details.entries if e.kind == "elf"]
    assert len(blocks) == len(elves)
    for entry, (header, kernels) in zip(elves, blocks, strict=True):
        if entry.compression != "zstd":
            assert isinstance(entry.details, CubinDetails)
            assert entry.details.arch == f"sm_{header[2]}"
            assert sorted((k.name, k.size) for k in entry.details.kernels) == sorted(kernels)


@pytest.mark.slow
def test_fatbin_entries_say_compression_variant_and_debug(builds):
    compressed = decoded(builds, "compressed.fatbin", decode_fatbin)
    assert [(e.kind, e.compression) for e in compressed.entries] == [
        ("elf", "zstd"),
        ("ptx", "zstd"),
    ]
    cubin = compressed.entries[0]
    plain = builds.path("sm_80.cubin").stat().st_size
    assert cubin.uncompressed_size == plain and cubin.size < plain and cubin.details is None
    speed = decoded(builds, "compress-speed.fatbin", decode_fatbin)
    assert [e.compression for e in speed.entries] == [None, "lz"]
    family = decoded(builds, "family-debug.fatbin", decode_fatbin)
    assert sorted((e.kind, e.arch, e.debug, e.compression) for e in family.entries) == [
        ("elf", "sm_100f", True, None),
        ("elf", "sm_103a", True, None),
        ("ptx", "sm_100a", True, None),
    ]
    assert [e.details.debug for e in family.entries if e.kind == "elf"] == [True, True]
    assert "sm_80*, ptx sm_90* (* compressed)" in compressed.summary()
    json.dumps(family.to_json())


@pytest.mark.slow
def test_payloads_are_found_by_kind_and_by_content(builds):
    cubin = memoryview(builds.path("sm_90a.cubin").read_bytes())
    fatbin = memoryview(builds.path("multi.fatbin").read_bytes())
    assert decode_payload("cuda_cubin", cubin).details.decoder == "cubin"
    assert decode_payload("some_kind", fatbin).details.decoder == "fatbin"
    mismatch = decode_payload("cuda_cubin", fatbin)
    assert (mismatch.details.decoder, mismatch.expected) == ("fatbin", "cubin")
    refused = decode_payload("cuda_fatbin", memoryview(b"PTX? no"))
    assert refused.details is None and isinstance(refused.error, PayloadError)


@pytest.mark.slow
def test_two_containers_back_to_back_are_one_fatbin(builds):
    data = builds.path("multi.fatbin").read_bytes() + builds.path("compressed.fatbin").read_bytes()
    details = decode_fatbin(memoryview(data + bytes(16)))
    assert details.containers == 2 and details.entry_count == 5


EXTREMES = (0, 1, 7, 8, 64, 255, 2**15, 2**31, 2**32 - 1, 2**63, 2**64 - 1)


def mutants(data: bytes, rng: random.Random, count: int):
    """Prefixes, extreme 2/4/8-byte values in the headers and tables, random byte flips."""
    for end in sorted({*range(0, 256), *rng.sample(range(256, len(data)), 200)}):
        yield data[:end]
    for _ in range(count):
        mutant = bytearray(data)
        if rng.random() < 0.6:
            width = rng.choice((1, 2, 4, 8))
            offset = rng.randrange(0, len(data) - width)
            value = rng.choice((*EXTREMES, len(data), rng.randrange(len(data))))
            mutant[offset : offset + width] = (value & (2 ** (8 * width) - 1)).to_bytes(
                width, "little"
            )
        else:
            for _ in range(rng.randint(1, 8)):
                mutant[rng.randrange(len(mutant))] = rng.randrange(256)
        yield bytes(mutant)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "decoder"),
    [
        ("sm_90a.cubin", decode_cubin),
        ("sm_90a-debug.cubin", decode_cubin),
        ("sm_100a.cubin", decode_cubin),
        ("multi.fatbin", decode_fatbin),
        ("lz4-all.fatbin", decode_fatbin),
        ("family-debug.fatbin", decode_fatbin),
    ],
)
def test_damaged_payloads_end_cleanly_with_bounded_work(builds, name, decoder):
    data = builds.path(name).read_bytes()
    rng = random.Random(name)
    cases = refused = 0
    for mutant in mutants(data, rng, 1500):
        started = time.process_time()
        try:
            details = decoder(memoryview(mutant))
        except PayloadError as exc:
            assert "\n" not in str(exc) and 0 <= exc.offset <= len(mutant)
            refused += 1
        else:
            # What a decoder keeps is bounded by what it read.
            assert len(json.dumps(details.to_json())) < 4 * len(mutant) + 4096
            details.summary()
        assert time.process_time() - started < 0.5, mutant.hex()
        cases += 1
    assert cases > 1900 and refused > 100


def handed_over(data: memoryview) -> FatbinDetails:
    """A stand-in for the PTX decoder (payloads/ptx.py, another module's): what it was given."""
    text = bytes(data)
    assert b"\0" not in text
    return FatbinDetails(0, (), len(text))  # any Details will do; entry_count carries the size


@pytest.mark.slow
def test_uncompressed_ptx_goes_to_the_registered_ptx_decoder(builds, monkeypatch):
    import ffitool.payloads as payloads

    monkeypatch.setitem(payloads._DECODERS, "ptx", "test_payloads_cuda:handed_over")
    payloads._decoder.cache_clear()
    try:
        family = decoded(builds, "family-debug.fatbin", decode_fatbin)
    finally:
        payloads._decoder.cache_clear()
    [ptx] = [e for e in family.entries if e.kind == "ptx"]
    text = builds.cuobjdump_output("family-debug.fatbin", "-ptx")
    assert ".target sm_100a" in text
    assert ptx.details is not None and 0 < ptx.details.entry_count <= ptx.size


def cubin_with(sections: list[tuple[int, int, int, int, int]], tail: bytes) -> bytes:
    """An ABI 8 cubin header, `tail` at offset 64, then section headers (name, type, offset,
    size, link) with section 0's name table being section 0 itself."""
    shoff = 64 + len(tail)
    header = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01\x41\x08" + bytes(7), 2, 190, 1, 0, 0,
        shoff, 0x6006402, 64, 0, 0, 64, len(sections), 0,
    )  # fmt: skip
    table = b"".join(
        struct.pack(
            "<IIQQQQIIQQ", name, kind, 0, 0, offset, size, link, 0, 0, 24 if kind == 2 else 0
        )
        for name, kind, offset, size, link in sections
    )
    return header + tail + table


def test_many_sections_over_the_same_bytes_cost_one_read():
    # 60,000 note and symbol-table sections over one 64 KiB region: each kind is read once.
    region = (b"\x0c\x00\x00\x00\x00\x00\x00\x00\xe8\x03\x00\x00NVIDIA Corp\x00" * 2700)[: 1 << 16]
    names = b"\0.note.nv.cuinfo\0.symtab\0"
    tail = names + region
    sections = [(0, 3, 64, len(names), 0)]
    sections += [(1, 7, 64 + len(names), len(region), 0)] * 30000
    sections += [(17, 2, 64 + len(names), len(region) // 24 * 24, 0)] * 30000
    started = time.process_time()
    details = decode_cubin(memoryview(cubin_with(sections, tail)))
    assert time.process_time() - started < 2.0
    assert details.arch == "sm_100" and details.kernel_count == 0


def test_symbols_spelling_one_long_name_again_and_again_are_refused():
    # Entry symbols at successive offsets of one 60 KB name: quadratic bytes if read naively.
    name = b"k" * 60000 + b"\0"
    symbols = b"".join(struct.pack("<IBBHQQ", i, 2, 0x10, 0, 0, 16) for i in range(20000))
    tail = b"\0.symtab\0" + name + symbols
    sections = [
        (0, 3, 64, 9, 0),
        (1, 2, 64 + 9 + len(name), len(symbols), 2),
        (0, 3, 73, len(name), 0),
    ]
    started = time.process_time()
    with pytest.raises(PayloadError, match="names spell more"):
        decode_cubin(memoryview(cubin_with(sections, tail)))
    assert time.process_time() - started < 2.0


def test_a_fatbin_of_many_entries_keeps_a_bounded_number():
    from ffitool.payloads.fatbin import ENTRY_LIMIT

    entry = struct.pack("<HHIQIIHHIIIQQQ", 2, 0x101, 64, 0, 0, 0, 8, 1, 80, 0, 0, 0x11, 0, 0)
    count = ENTRY_LIMIT + 100
    data = struct.pack("<IHHQ", 0xBA55ED50, 1, 16, 64 * count) + entry * count
    details = decode_fatbin(memoryview(data))
    assert details.entry_count == count and len(details.entries) == ENTRY_LIMIT
    assert details.entries[0].error is not None  # an empty ELF payload: refused, not raised
    assert f"{count} entries" in details.summary()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["multi", "family-debug"])
def test_uncompressed_cubins_sit_where_cuobjdump_extracts_them_from(builds, tmp_path, name):
    data = builds.path(f"{name}.fatbin").read_bytes()
    subprocess.run(
        [str(builds.cuobjdump), "-xelf", "all", str(builds.path(f"{name}.fatbin"))],
        cwd=tmp_path, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    extracted = [path.read_bytes() for path in sorted(tmp_path.glob("*.cubin"))]
    elves = [e for e in decode_fatbin(memoryview(data)).entries if e.kind == "elf"]
    assert len(extracted) == len(elves) > 0
    for entry, cubin in zip(elves, extracted, strict=True):
        assert data[entry.offset : entry.offset + len(cubin)] == cubin


@pytest.mark.slow
def test_lz4_entries_inflate_to_what_cuobjdump_extracts(builds, tmp_path):
    from ffitool.payloads.lz4 import inflate_block

    path = builds.path("lz4-all.fatbin")
    data = memoryview(path.read_bytes())
    subprocess.run(
        [str(builds.cuobjdump), "-xelf", "all", "-xptx", "all", str(path)],
        cwd=tmp_path, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [cubin, ptx] = decode_fatbin(data).entries
    assert (cubin.compression, ptx.compression) == ("lz", "lz")
    assert cubin.details is not None and cubin.details.kernel_count == 4
    for entry, pattern in ((cubin, "*.cubin"), (ptx, "*.ptx")):
        [extracted] = [p.read_bytes() for p in tmp_path.glob(pattern)]
        block = data[entry.offset : entry.offset + entry.size]
        inflated = inflate_block(block, entry.uncompressed_size)
        assert inflated.rstrip(b"\0") == extracted.rstrip(b"\0")
        for end in range(0, len(block), 7):  # every truncation is refused
            with pytest.raises(PayloadError):
                inflate_block(block[:end], entry.uncompressed_size)


def test_hostile_lz4_blocks_are_refused_with_bounded_work():
    from ffitool.payloads.lz4 import inflate_block

    cases = [
        (b"\x10A\x00\x00", 5),  # a match offset of 0
        (b"\x10A\x02\x00", 5),  # a match before the start of the output
        (b"\x1fA\x01\x00" + b"\xff" * 4000, 1 << 20),  # a match longer than the entry says
        (b"\xf0", 20),  # literal length bytes missing
        (b"\x50AB", 5),  # literals missing
        (b"\x10A\x01", 5),  # the offset's second byte missing
        (b"\x00", 1),  # inflates to less than the entry says
    ]
    for block, size in cases:
        started = time.process_time()
        with pytest.raises(PayloadError):
            inflate_block(memoryview(block), size)
        assert time.process_time() - started < 0.1
    # A long overlapping match is one repeated pattern, not a byte at a time.
    block = b"\x2fAB\x02\x00" + b"\xff" * 3900 + b"\x00"
    size = 2 + 4 + 15 + 255 * 3900
    assert inflate_block(memoryview(block), size) == (b"AB" * size)[:size]
