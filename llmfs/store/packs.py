"""Packs: many cold frames in one LMDB value.

LMDB keeps every value larger than about 2 KiB in its own run of whole 4 KiB
overflow pages, so a store of one frame per value loses about 2 KiB per
block to page rounding (20 % of a compacted store).  Frames the compactor has
finished with are therefore copied into *packs* of about ``pack_kib`` (256
KiB) each (git's packs, an LSM's sorted runs), and an index maps each block key to its
pack, offset and length.  Fresh writes stay one frame per value: they are
rewritten soon anyway.

A pack value is immutable and its id is never reused (meta ``next_pack``
counts up in the transaction that writes it), so a copy of a pack held in
memory is valid for as long as any index record names it.  When most of a
pack's bytes belong to blocks that are gone, its live frames are copied out
(loose again, packed anew with others) and the pack is deleted, all in one
transaction.

Layout (little endian)::

    pack     "LPK1" | count u32 | count x (block key 32 bytes, offset u32,
             length u32) | frames
    index    pack u64 | offset u32 | length u32 | the frame's codec u8,
             version u8, model id 8 bytes, raw length u32 | CRC-32 (sealed)
    fill     live bytes u32 | live frames u32 | total frame bytes u32 | total
             frames u32 (sealed)

The index repeats the frame header's fields so that the compactor and
``llmfs stats`` can walk every block without reading a pack.  The pack's own
directory lets a rewrite and ``llmfs fsck`` find its frames without a
reverse index; only entries the index agrees with are live.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from ..codec.frame import Codec, Head

MAGIC = b"LPK1"
_HEAD = struct.Struct("<4sI")
_ENTRY = struct.Struct("<32sII")
_WHERE = struct.Struct("<QIIBB8sI")
_FILL = struct.Struct("<IIII")
WHERE_SIZE, FILL_SIZE = _WHERE.size, _FILL.size


class PackError(ValueError):
    """A pack value whose directory does not parse (bit rot)."""


@dataclass(frozen=True)
class Where:
    """Where a packed frame lives, and its header's fields."""
    pack: int
    offset: int
    length: int
    head: Head

    def pack_record(self) -> bytes:
        h = self.head
        return _WHERE.pack(self.pack, self.offset, self.length, h.codec, h.version, h.model,
                           h.raw_len)

    @classmethod
    def unpack(cls, data: bytes) -> "Where":
        pack, offset, length, codec, version, model, raw_len = _WHERE.unpack(data)
        return cls(pack, offset, length, Head(Codec(codec), version, raw_len, model))


@dataclass
class Fill:
    """How much of a pack is still referenced."""
    live_bytes: int
    live_frames: int
    total_bytes: int
    total_frames: int

    def pack(self) -> bytes:
        return _FILL.pack(self.live_bytes, self.live_frames, self.total_bytes, self.total_frames)

    @classmethod
    def unpack(cls, data: bytes) -> "Fill":
        return cls(*_FILL.unpack(data))

    @property
    def sparse(self) -> bool:
        """Most of the pack is dead: worth rewriting."""
        return 2 * self.live_bytes < self.total_bytes


def build(frames: list[tuple[bytes, bytes]]) -> tuple[bytes, list[tuple[bytes, int, int]]]:
    """The pack value holding *frames* ((block key, frame) each) and each
    frame's (key, offset, length) in it."""
    pos = _HEAD.size + _ENTRY.size * len(frames)
    places = []
    for key, frame in frames:
        places.append((key, pos, len(frame)))
        pos += len(frame)
    head = _HEAD.pack(MAGIC, len(frames)) + b"".join(_ENTRY.pack(*p) for p in places)
    return head + b"".join(f for _, f in frames), places


def directory(value: bytes) -> list[tuple[bytes, int, int]]:
    """(key, offset, length) of every frame a pack value holds."""
    if len(value) < _HEAD.size:
        raise PackError("pack truncated")
    magic, n = _HEAD.unpack_from(value)
    end = _HEAD.size + _ENTRY.size * n
    if magic != MAGIC or end > len(value):
        raise PackError("pack directory damaged")
    out = [_ENTRY.unpack_from(value, _HEAD.size + _ENTRY.size * i) for i in range(n)]
    if any(off < end or off + length > len(value) for _, off, length in out):
        raise PackError("pack directory damaged")
    return out


def overhead(count: int) -> int:
    """Bytes of a pack of *count* frames that are not frames."""
    return _HEAD.size + _ENTRY.size * count
