"""Read a GGUF file's header without loading it: metadata, and proof that it is whole.

llama.cpp reports a bad or cut-off file with a generic load failure; reading
the header first lets us say exactly what is wrong ("not a GGUF file",
"truncated: 120 MB of 253 MB") before any engine starts. Large arrays (the
vocabulary) are skipped, except the token strings we are asked to keep.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidModelError

MAGIC = b"GGUF"
# GGUF value types -> struct format of one scalar (8 = string, 9 = array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
# ggml tensor type -> (elements per block, bytes per block), for the size check.
_TYPE_SIZES = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict = field(default_factory=dict)  # scalars and short arrays; long arrays as their length
    tokens: list[str] | None = None  # tokenizer.ggml.tokens, when asked for
    tensor_count: int = 0
    size: int = 0
    expected_size: int = 0

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def arch_key(self, suffix: str, default=None):
        return self.metadata.get(f"{self.architecture}.{suffix}", default)


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise EOFError
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("Q")).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep_array: bool = False):
        if vtype == 8:
            return self.string()
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == 9:
            etype, count = self.scalar("I"), self.scalar("Q")
            if etype in _SCALARS and not keep_array:
                size = struct.calcsize(_SCALARS[etype])
                if count > 64:
                    self.take(size * count)
                    return count
                return [self.scalar(_SCALARS[etype]) for _ in range(count)]
            if etype == 8 and not keep_array and count > 64:
                for _ in range(count):
                    self.take(self.scalar("Q"))
                return count
            return [self.value(etype) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf(path: str | Path, keep_tokens: bool = False) -> GGUFInfo:
    """Parse the header of ``path`` or raise ``InvalidModelError`` naming what is wrong."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(4)
        if head != MAGIC:
            raise InvalidModelError(
                f"{path} is not a GGUF file (it starts with {head!r}, not b'GGUF')",
                hint="pass a .gguf model, a Hugging Face checkpoint directory, or convert it with `preflexor-local convert gguf`",
            )
        # The header of any real model fits in its first 64 MiB (big vocabularies included).
        data = head + fh.read(64 * 1024 * 1024)
    r = _Reader(data, path)
    r.pos = 4
    try:
        version = r.scalar("I")
        if version not in (2, 3):
            raise InvalidModelError(f"{path} is GGUF version {version}; llama.cpp reads versions 2 and 3")
        n_tensors, n_kv = r.scalar("Q"), r.scalar("Q")
        info = GGUFInfo(path=path, version=version, tensor_count=n_tensors, size=size)
        for _ in range(n_kv):
            key = r.string()
            vtype = r.scalar("I")
            keep = keep_tokens and key == "tokenizer.ggml.tokens"
            val = r.value(vtype, keep_array=keep)
            if keep:
                info.tokens = val
            else:
                info.metadata[key] = val
        ends = []
        for _ in range(n_tensors):
            r.string()
            dims = [r.scalar("Q") for _ in range(r.scalar("I"))]
            ttype, offset = r.scalar("I"), r.scalar("Q")
            elements = 1
            for d in dims:
                elements *= d
            block, nbytes = _TYPE_SIZES.get(ttype, (1, 0))
            ends.append(offset + elements // block * nbytes)
        align = int(info.metadata.get("general.alignment", 32))
        data_start = (r.pos + align - 1) // align * align
        info.expected_size = data_start + max(ends, default=0)
    except EOFError:
        raise InvalidModelError(
            f"{path} is truncated: its header ends early ({size} bytes on disk)",
            hint="the download or copy was cut off; fetch or convert the file again",
        ) from None
    if info.expected_size > size:
        raise InvalidModelError(
            f"{path} is truncated: {size / 2**20:.1f} MiB on disk, its tensors need {info.expected_size / 2**20:.1f} MiB",
            hint="the download or copy was cut off; fetch or convert the file again",
        )
    return info


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False
