"""A minimal RGB PNG encoder (stdlib only), for the plots written when matplotlib is absent."""

from __future__ import annotations

import struct
import zlib


def encode_png(width: int, height: int, pixels: bytearray) -> bytes:
    """``pixels``: width * height * 3 bytes, row by row; each row gets filter byte 0."""
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3 : (y + 1) * width * 3]) for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
