"""What a module's payload holds: one decoder per known kind, behind one small interface.

A blob's framing says each module's kind and bytes; what the bytes are (a cubin for sm_90a and
its kernels, PTX, TVM's `cuda` module with its function table, a Relax VM executable) is up to
the kind's loader, which ffitool never runs. A decoder reads the bytes statically instead and
returns a `Details`: a bounded, typed summary, one line of text and a JSON object, plus what
it found wrong. Decoders are found by kind (`_BY_KIND`) and, for a kind nobody registered or
bytes that are not what their kind says, by content (`_SNIFFERS`): adding a kind is one module
and one line in each table.

Every payload is attacker-controlled: a decoder reads only inside the buffer it is given,
refuses what it cannot read with `PayloadError` (one line, with the offset in the payload), and
bounds what it keeps (names, entries) so that its work and its output stay proportional to the
payload. Nothing here imports a decoder until a payload of its kind is met.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from typing import Any, Protocol

from ffitool.formats.sniff import CUBIN_FILE, ELF, FATBIN, HEAD_SIZE, sniff

__all__ = [
    "DECODED_KINDS",
    "SNIFFED_FIRST_BYTES",
    "SNIFF_BYTES",
    "Decoded",
    "Details",
    "PayloadError",
    "choose_decoder",
    "decode_payload",
    "decoder_for_content",
    "run_decoder",
]

SNIFF_BYTES = 4096
"""Bytes from a payload's start that every sniffer decides on: a payload left in the file is
read this far to choose its decoder, and whole only if one is chosen."""

JsonValue = Any
"""A value `json.dumps` writes: str, int, float, bool, None, or lists and dicts of them."""


class Details(Protocol):
    """What a decoder found in one payload."""

    # A read-only property rather than an attribute: a frozen dataclass's field satisfies it
    # (mypy refuses a read-only field for a settable protocol attribute).
    @property
    def decoder(self) -> str:
        """Which decoder read it: "cubin", "fatbin", "ptx", "tvm.cuda", "relax.VMExecutable"..."""
        ...

    def summary(self) -> str:
        """One line for text output (no newline; the renderer bounds and escapes it)."""
        ...

    def to_json(self) -> dict[str, JsonValue]:
        """The details as the JSON report carries them, `decoder` included; bounded."""
        ...


class PayloadError(Exception):
    """A payload that its decoder cannot read, with the offset (in the payload) where."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"{what} at payload offset {offset}")
        self.what = what
        self.offset = offset


Decoder = Callable[[memoryview], Details]
"""A decoder: the payload's bytes (read-only) -> its details, or PayloadError."""


def _is_ptx(head: memoryview) -> bool:
    """PTX: comments and whitespace, then `.version` (the ISA's first directive)."""
    text = bytes(head[:SNIFF_BYTES])
    position = 0
    while True:
        while position < len(text) and text[position] in b" \t\r\n\v\f":
            position += 1
        if text.startswith(b"//", position):
            position = text.find(b"\n", position)
        elif text.startswith(b"/*", position):
            position = text.find(b"*/", position)
            position = -1 if position < 0 else position + 2
        else:
            return text.startswith(b".version", position)
        if position < 0:
            return False


def _is_cubin(data: memoryview) -> bool:
    """A 64-bit little-endian ELF file for EM_CUDA (190): what ptxas writes."""
    return sniff(bytes(data[:HEAD_SIZE])) == CUBIN_FILE


def _is_fatbin(data: memoryview) -> bool:
    """The fatbin container magic, 0xBA55ED50 little-endian."""
    return bytes(data[: len(FATBIN)]) == FATBIN


_VM_MAGICS = (b"\x1d\x15\x14\x42\x2f\xde\x25\xd2", b"\x1e\x15\x14\x42\x2f\xde\x25\xd2")
"""A Relax VM executable's header, little-endian (relax_vm.MAGIC_V1, MAGIC_V2)."""


def _vm_magic(data: memoryview) -> bool:
    return bytes(data[:8]) in _VM_MAGICS


_DECODERS: Mapping[str, str] = {
    "ptx": "ffitool.payloads.ptx:decode_ptx",
    "cubin": "ffitool.payloads.cubin:decode_cubin",
    "fatbin": "ffitool.payloads.fatbin:decode_fatbin",
    "tvm.cuda": "ffitool.payloads.tvm_device:decode_cuda_module",
    "tvm.hip": "ffitool.payloads.tvm_device:decode_hip_module",
    "tvm.opencl": "ffitool.payloads.tvm_device:decode_opencl_module",
    "tvm.hexagon": "ffitool.payloads.tvm_device:decode_hexagon_module",
    "tvm.metal": "ffitool.payloads.tvm_device:decode_metal_module",
    "tvm.webgpu": "ffitool.payloads.tvm_device:decode_webgpu_module",
    "relax.VMExecutable": "ffitool.payloads.relax_vm:decode_vm_executable",
    "const_loader": "ffitool.payloads.tvm_modules:decode_const_loader",
    "static_library": "ffitool.payloads.tvm_modules:decode_static_library",
    "c": "ffitool.payloads.tvm_modules:decode_c_source",
}
"""Decoder name -> "module:function"."""
_BY_KIND: Mapping[str, str] = {
    # The README's example kinds, which no loader in TVM or tvm-ffi reads (issue 19): what their
    # names promise. TVM's own `cuda` kind is TVM's module format, not a bare cubin.
    "cuda_ptx": "ptx",
    "cuda_cubin": "cubin",
    "cuda_fatbin": "fatbin",
    "cuda": "tvm.cuda",
    "hip": "tvm.hip",
    "opencl": "tvm.opencl",
    "hexagon": "tvm.hexagon",
    "metal": "tvm.metal",
    "webgpu": "tvm.webgpu",
    "relax.VMExecutable": "relax.VMExecutable",
    "const_loader": "const_loader",
    "metadata": "const_loader",
    "static_library": "static_library",
    "c": "c",
}
"""Module kind -> the decoder its loader expects (e.g. "cuda" -> "tvm.cuda")."""
_SNIFFERS: tuple[tuple[bytes, Callable[[memoryview], bool], str], ...] = (
    (ELF[:1], _is_cubin, "cubin"),
    (FATBIN[:1], _is_fatbin, "fatbin"),
    (b"\x1d\x1e", _vm_magic, "relax.VMExecutable"),
    (b"/. \t\r\n\v\f", _is_ptx, "ptx"),
)
"""(the bytes the format can start with, a test of its first bytes, decoder name), tried in
order for content-based recognition. A test runs only on a payload that starts with one of
its bytes, so that a blob of a million payloads nobody decodes costs a dictionary lookup
each. It is given the payload (or its first SNIFF_BYTES, when it lies in the file), reads at
most SNIFF_BYTES of it and never imports its decoder's module."""
_BY_FIRST_BYTE: dict[int, tuple[tuple[Callable[[memoryview], bool], str], ...]] = {
    first: tuple((test, name) for starts, test, name in _SNIFFERS if first in starts)
    for first in {b for starts, _, _ in _SNIFFERS for b in starts}
}
"""_SNIFFERS by the first byte of the formats they test, in order."""
DECODED_KINDS = frozenset(_BY_KIND)
"""Kinds a decoder is registered for."""
SNIFFED_FIRST_BYTES = frozenset(_BY_FIRST_BYTE)
"""First bytes of the formats recognised by content. A payload of a kind outside
DECODED_KINDS that starts with none of these has no decoder: the model tests both inline,
without a call per payload."""


FILE_EXTENSIONS: Mapping[str, str] = {"cubin": ".cubin", "fatbin": ".fatbin", "ptx": ".ptx"}
"""The file name extension of a payload a decoder read, where its format has one (as nvcc and
cuobjdump name such files); any other payload is written as `.bin`."""


def file_extension(decoded: Decoded | None) -> str:
    """The extension of a file holding these bytes: what their decoder read, else `.bin`."""
    if decoded is None or decoded.details is None:
        return ".bin"
    return FILE_EXTENSIONS.get(decoded.details.decoder, ".bin")


@dataclass(frozen=True)
class Decoded:
    """A payload's decoding: the details, or why there are none."""

    details: Details | None
    error: PayloadError | None = None
    expected: str | None = None
    """The decoder the kind calls for, when the content is something else (a mismatch)."""
    decoder: str | None = None
    """The decoder that read (or failed to read) the payload; None when none was run."""
    too_large: bool = False
    """The payload was not read: it is over the caller's decoding limit (`decoder` would
    have read it)."""


def decoder_for_content(data: memoryview) -> str | None:
    """The decoder whose format the bytes start with, or None."""
    if not data:
        return None
    for test, name in _BY_FIRST_BYTE.get(data[0], ()):
        if test(data):
            return name
    return None


@cache
def _decoder(name: str) -> Decoder:
    module, function = _DECODERS[name].split(":")
    decoder: Decoder = getattr(import_module(module), function)
    return decoder


def choose_decoder(kind: str, head: memoryview) -> tuple[str | None, str | None]:
    """(the decoder to run, the decoder the kind calls for when the content is something else)
    from a payload's start (`head`: the whole payload, or at least its first SNIFF_BYTES):
    its kind's decoder, unless the content is another known format; else the content's;
    (None, None) when neither knows it."""
    expected = _BY_KIND.get(kind)
    found = decoder_for_content(head)
    name = expected if expected is not None and (found is None or found == expected) else found
    if name is None:
        return None, None
    return name, expected if expected is not None and name != expected else None


def run_decoder(name: str, data: memoryview, mismatch: str | None = None) -> Decoded:
    """Run one decoder (loaded on first use) over a whole payload."""
    try:
        return Decoded(_decoder(name)(data), None, mismatch, name)
    except PayloadError as exc:
        return Decoded(None, exc, mismatch, name)


def decode_payload(kind: str, data: memoryview) -> Decoded:
    """Decode one module's payload: by its kind's decoder, else by its content."""
    name, mismatch = choose_decoder(kind, data)
    if name is None:
        return Decoded(None)
    return run_decoder(name, data, mismatch)
