"""Which GPUs decoded device code runs on: what `check --require-arch` asks of every payload.

Device code is SASS (a cubin, or a fatbin's ELF entry), which runs as it is, or PTX, which the
driver compiles (JIT) for the GPU it loads on. NVIDIA's compatibility rules, as the CUDA
programming guide and the nvcc manual state them:

- SASS for sm_XY runs on GPUs of the same major version X with minor version Y or later
  (sm_80 code runs on sm_86 and sm_89, never on sm_90).
- PTX for compute_XY JITs to any GPU of compute capability XY or later, any major version.
- The `a` (architecture-specific) variants, sm_90a or compute_100a, use features of exactly
  one compute capability: their SASS runs, and their PTX JITs, only there.
- The `f` (family-specific) variants, sm_100f or compute_100f, run and JIT on the GPUs of the
  same major version with the same or a later minor version (sm_100f on sm_100 and sm_103).

A required architecture names a GPU, with the variant the user needs: `sm_90` is met by any
code that runs on an sm_90 GPU (sm_90 or sm_90a SASS, PTX for compute_90 or earlier...);
`sm_90a` only by `a` code for sm_90, which uses what only sm_90 has; `sm_100f` by `f` code of
the family up to sm_100, or `a` code for sm_100 (a superset of its family's features).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ffitool.payloads import Details

if TYPE_CHECKING:
    from ffitool.payloads.cubin import CubinDetails
    from ffitool.payloads.fatbin import FatbinDetails
    from ffitool.payloads.ptx import PtxDetails
    from ffitool.payloads.tvm_device import DeviceModule

__all__ = ["ARCH_PATTERN", "DeviceCode", "device_code", "runs_on"]

ARCH_PATTERN = re.compile(r"sm_(\d{2,3})([af]?)")
"""An architecture as nvcc spells it for SASS: sm_80, sm_90a, sm_100f."""
_NESTING = 4
"""A TVM `cuda` module holds a fatbin, which holds cubins: deeper nesting is not followed."""


@dataclass(frozen=True)
class DeviceCode:
    """One piece of code in a payload: "sass" or "ptx", and the architecture it is for."""

    kind: str
    arch: str
    """As sm_XY[a|f], for PTX too (compute_90a is "sm_90a")."""

    def label(self) -> str:
        return self.arch if self.kind == "sass" else f"ptx {self.arch}"


def device_code(details: Details | None, depth: int = 0) -> tuple[DeviceCode, ...]:
    """The SASS and PTX a payload's details name (a fatbin's entries, a TVM `cuda` module's
    code); empty for a payload that holds no device code or was not decoded."""
    name = None if details is None or depth > _NESTING else details.decoder
    if name == "cubin":
        cubin = cast("CubinDetails", details)
        built = cubin.built_for
        return (
            DeviceCode("sass", built if built and ARCH_PATTERN.fullmatch(built) else cubin.arch),
        )
    if name == "fatbin":
        entries = cast("FatbinDetails", details).entries
        return tuple(
            DeviceCode("sass" if entry.kind == "elf" else "ptx", entry.arch)
            for entry in entries
            if entry.kind in ("elf", "ptx")
        )
    if name == "ptx":
        targets = cast("PtxDetails", details).target
        return tuple(DeviceCode("ptx", t) for t in targets if ARCH_PATTERN.fullmatch(t))
    if name == "tvm.cuda":
        return device_code(cast("DeviceModule", details).code, depth + 1)
    return ()


def runs_on(code: DeviceCode, required: str) -> bool:
    """Whether `code` meets a required architecture (see the module's documentation)."""
    have, want = ARCH_PATTERN.fullmatch(code.arch), ARCH_PATTERN.fullmatch(required)
    if have is None or want is None:
        return False
    number, variant = int(have.group(1)), have.group(2)
    target, target_variant = int(want.group(1)), want.group(2)
    if variant == "a" or target_variant == "a":
        return variant == "a" and number == target
    if target_variant == "f" and variant != "f":
        return False
    if variant == "f" or code.kind == "sass":
        return number // 10 == target // 10 and number <= target
    return number <= target
