"""Byte counts for people: one spelling of sizes in every message, table heading and bar."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_size(size: int) -> str:
    """`size` bytes in the largest binary unit that fits, with one decimal (`414.1 MiB`);
    below 1 KiB the exact count (`17 B`). Decimal units (kB, MB) are never used: object files,
    pages and the `--max-blob-size` limits people compare these with are powers of two."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in _UNITS[:-1]:
        if round(value, 1) < 1024:  # 1048575 B is 1.0 MiB, not 1024.0 KiB
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"
