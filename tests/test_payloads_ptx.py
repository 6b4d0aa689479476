"""The PTX decoder against what NVIDIA's own tools write and read, and against hostile text.

nvcc (the `nvidia-cuda-nvcc` wheel, which runs without a GPU) writes the PTX; ptxas, which
compiles it as the driver would, is the oracle for its kernels (`ptxas -v` names each entry
function it compiles).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require, run_measured

from ffitool.payloads import PayloadError, decode_payload
from ffitool.payloads.ptx import NAMES_KEPT, decode_ptx

KERNELS = r"""
extern "C" __global__ void add(float* a, const float* b, int n) {
    int i = threadIdx.x;
    if (i < n) a[i] += b[i];
}
template <class T> __global__ void scale(T* a, T s) { a[threadIdx.x] *= s; }
template __global__ void scale<float>(float*, float);
__device__ __noinline__ float helper(float x) { return x * 2; }
extern "C" __global__ void use_helper(float* a) { a[0] = helper(a[0]); }
/* .entry not_a_kernel( inside a comment */
"""


def nvidia_tool(name: str) -> Path:
    """A tool of the nvidia-cuda-nvcc wheel (installed in site-packages, not on PATH)."""
    try:
        import nvidia
    except ImportError:
        require(False, "the nvidia-cuda-nvcc wheel is not installed")
    found = [Path(p) / "cu13" / "bin" / name for p in nvidia.__path__]
    found = [p for p in found if p.exists()]
    require(bool(found), f"the nvidia-cuda-nvcc wheel has no {name}")
    return found[0]


def nvcc_ptx(tmp_path: Path, arch: str, *flags: str) -> bytes:
    source = tmp_path / "kernels.cu"
    source.write_text(KERNELS)
    out = tmp_path / f"kernels-{arch}.ptx"
    command = [str(nvidia_tool("nvcc")), "-ptx", f"-arch={arch}", *flags, str(source)]
    subprocess.run([*command, "-o", str(out)], check=True, capture_output=True, timeout=300)
    return out.read_bytes()


def ptxas_entries(tmp_path: Path, ptx: bytes, arch: str) -> set[str]:
    path = tmp_path / "oracle.ptx"
    path.write_bytes(ptx)
    command = [str(nvidia_tool("ptxas")), "-v", f"-arch={arch}", str(path), "-o", "/dev/null"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    return set(re.findall(r"Compiling entry function '([^']+)'", done.stderr))


def ptxas_release() -> str:
    command = [str(nvidia_tool("ptxas")), "--version"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
    found = re.search(r"release (\d+\.\d+)", done.stdout)
    assert found is not None
    return found.group(1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "flags", "target"),
    [
        ("sm_80", (), ("sm_80",)),
        ("sm_90a", (), ("sm_90a",)),
        ("sm_100", (), ("sm_100",)),
        ("sm_80", ("-G",), ("sm_80", "debug")),
    ],
)
def test_nvcc_ptx_as_ptxas_reads_it(tmp_path, arch, flags, target):
    ptx = nvcc_ptx(tmp_path, arch, *flags)
    details = decode_ptx(memoryview(ptx))
    assert details.target == target
    assert details.address_size == 64
    assert set(details.entries) == ptxas_entries(tmp_path, ptx, arch)
    assert details.entry_count == 3
    assert "not_a_kernel" not in details.entries
    # CUDA 13.x writes PTX ISA 9.x (the ISA's major is the toolkit's minus 4).
    major = int(ptxas_release().split(".")[0])
    assert details.version.startswith(f"{major - 4}.")
    assert details.summary().startswith(f"PTX {details.version} {', '.join(target)}, 64-bit, 3")


@pytest.mark.slow
def test_cuda_ptx_kind_and_sniffed_content(tmp_path):
    ptx = nvcc_ptx(tmp_path, "sm_90a")
    by_kind = decode_payload("cuda_ptx", memoryview(ptx))
    by_content = decode_payload("my_kernels", memoryview(ptx))
    assert by_kind.details == by_content.details
    assert by_kind.expected is None and by_content.expected is None
    assert by_kind.details is not None and by_kind.details.to_json()["decoder"] == "ptx"


HEADER = b"//\n// a comment\n/* block\n.entry fake( */\n\n.version 8.4\n.target sm_90a, debug\n"


def test_linkage_and_declarations():
    text = HEADER + (
        b".address_size 64\n"
        b'.file 1 ".entry quoted("\n'
        b".extern .func (.param .b32 r) declared(.param .b32 x);\n"
        b".visible .func (.param .b32 r) exported(.param .b32 x) { ret; }\n"
        b".func internal() { ret; }\n"
        b".weak .entry weak_kernel() { ret; }\n"
        b".entry plain_kernel\n() { ret; }\n"
        b".visible .entry $odd%name() { ret; }\n"
    )
    details = decode_ptx(memoryview(text))
    assert details.version == "8.4"
    assert details.target == ("sm_90a", "debug")
    assert details.entries == ("weak_kernel", "plain_kernel", "$odd%name")
    assert details.functions == ("exported",)
    assert details.to_json() == {
        "decoder": "ptx",
        "version": "8.4",
        "target": ["sm_90a", "debug"],
        "address_size": 64,
        "entries": ["weak_kernel", "plain_kernel", "$odd%name"],
        "entry_count": 3,
        "functions": ["exported"],
        "function_count": 1,
    }


def test_trailing_nul_padding_is_not_text():
    details = decode_ptx(memoryview(HEADER + b".entry k() {}\n" + b"\0" * 64))
    assert details.entries == ("k",) and details.address_size is None


def test_a_missing_target_is_shown_not_refused():
    """ptxas refuses PTX without `.target`; it is still PTX, and the empty target says so."""
    details = decode_ptx(memoryview(b".version 8.0\n.entry k() {}\n"))
    assert details.target == () and details.entries == ("k",)
    assert details.summary() == "PTX 8.0 no target, 1 entry: k"


def test_names_are_capped_and_counted():
    many = b"".join(b".entry k%d() { ret; }\n" % i for i in range(NAMES_KEPT + 5))
    details = decode_ptx(memoryview(HEADER + many))
    assert details.entry_count == NAMES_KEPT + 5
    assert len(details.entries) == NAMES_KEPT
    assert details.summary().endswith(f"k0, k1, k2 (+{NAMES_KEPT + 2})")


@pytest.mark.parametrize(
    ("text", "what", "offset"),
    [
        (b"", "no .version directive", 0),
        (b"hello world\n", "no .version directive", 0),
        (b"\x7fELF\x02\x01", "byte 0x7f", 0),
        (HEADER + b".entry k\x00x()", "byte 0x00", len(HEADER) + 8),
        (HEADER + b"// caf\xc3\xa9 ok\n// \xff\n", "not UTF-8", len(HEADER) + 15),
        (b"// x\n.target sm_80\n.version 8.0\n", ".target before .version", 5),
        (b".version eight\n", ".version without", 8),
        (b".version 8.0\n.target ;\n", ".target without", 20),
    ],
)
def test_refused_with_offset(text, what, offset):
    with pytest.raises(PayloadError) as caught:
        decode_ptx(memoryview(text))
    assert what in caught.value.what
    assert caught.value.offset == offset


HOSTILE_TAILS = (
    "b'/*' * 200_000",  # unclosed comments: each would rescan to the end
    "b'\"' + b'x' * 400_000",  # an unclosed string
    "b'.func (' * 100_000",  # return lists that never close
    "b'.visible ' * 100_000 + b'\\n'",  # linkage looked behind from nothing
    "b' ' * 400_000 + b'.entry' + b' ' * 400_000",
    "'// \u00e9'.encode() * 100_000",  # many short non-ASCII runs, each checked alone
)


def test_hostile_text_is_read_in_one_pass(tmp_path):
    """Each tail costs a scanner that restarts a search at every opening quadratic work
    (minutes for these 400 kB); read in one pass, all of them take a fraction of a second of
    CPU, which is what is bounded."""
    script = (
        "from ffitool.payloads.ptx import decode_ptx\n"
        f"for tail in ({', '.join(HOSTILE_TAILS)}):\n"
        f"    assert decode_ptx(memoryview({HEADER!r} + tail)).version == '8.4'\n"
    )
    code, cpu, _ = run_measured([sys.executable, "-c", script], tmp_path)
    assert code == 0, (tmp_path / "stderr").read_text()
    assert cpu < 3.0


def test_mutated_ptx_never_raises_anything_else():
    import random

    base = bytearray(HEADER + b".address_size 64\n.visible .entry k(.param .u64 p) { ret; }\n" * 20)
    chooser = random.Random(19)
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(chooser.randrange(1, 8)):
            data[chooser.randrange(len(data))] = chooser.randrange(256)
        cut = chooser.randrange(len(data) + 1)
        try:
            details = decode_ptx(memoryview(bytes(data[:cut])))
        except PayloadError as exc:
            assert 0 <= exc.offset <= cut
        else:
            assert details.entry_count <= 20
