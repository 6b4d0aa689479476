"""LZ4 blocks, as fatbin entries compressed with flag 0x2000 hold them, inflated with bounds.

nvcc's `--compress-mode=speed` (and the default of toolkits before 12.8's zstd) writes each
compressed fatbin entry as one LZ4 block (the block format, no frame): sequences of a token
(literal length in the high nibble, match length minus 4 in the low one, 15 meaning "more bytes
follow, 255 meaning more again"), the literals, then a 2-byte little-endian offset back into
the output. The entry header says the inflated size: the output must come to exactly that, and
the work is linear in the output, which is at most `size` bytes.
"""

from __future__ import annotations

from ffitool.payloads import PayloadError

__all__ = ["inflate_block"]

MIN_MATCH = 4


def _length(src: memoryview, cursor: int, start: int) -> tuple[int, int]:
    """A nibble's length extended by the bytes that follow it when it is 15."""
    length = start
    if start == 15:
        while True:
            if cursor >= len(src):
                raise PayloadError("LZ4 length past the end of the block", cursor)
            extra = src[cursor]
            cursor += 1
            length += extra
            if extra != 255:
                break
    return length, cursor


def inflate_block(src: memoryview, size: int) -> bytes:
    """The `size` bytes an LZ4 block inflates to; PayloadError (offsets in the block) if it
    does not come to exactly that."""
    out = bytearray()
    cursor = 0
    while cursor < len(src):
        token = src[cursor]
        literals, cursor = _length(src, cursor + 1, token >> 4)
        if literals > len(src) - cursor or literals > size - len(out):
            raise PayloadError("LZ4 literals past the end of the block or the entry", cursor)
        out += src[cursor : cursor + literals]
        cursor += literals
        if cursor == len(src):
            break  # the last sequence has literals only
        if cursor + 2 > len(src):
            raise PayloadError("LZ4 match offset past the end of the block", cursor)
        back = src[cursor] | src[cursor + 1] << 8
        length, cursor = _length(src, cursor + 2, token & 15)
        length += MIN_MATCH
        if back == 0 or back > len(out):
            raise PayloadError(f"LZ4 match offset {back} outside the output", cursor)
        if length > size - len(out):
            raise PayloadError("LZ4 block inflates past the size its entry says", cursor)
        start = len(out) - back
        if back >= length:
            out += out[start : start + length]
        else:  # the match overlaps what it writes: a repeated pattern
            out += (out[start:] * (length // back + 1))[:length]
    if len(out) != size:
        raise PayloadError(f"LZ4 block inflates to {len(out)} bytes, not {size}", len(src))
    return bytes(out)
