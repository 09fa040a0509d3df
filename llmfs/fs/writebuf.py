"""Per-file write buffer: dirty blocks and the attributes they imply.

While a file has a :class:`Dirty` entry, its size and mtime there are the
truth and the store's copy is older.  Each block carries a version so a flush
(which encodes a snapshot outside the lock) drops only the blocks nobody
wrote to while it was encoding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Snapshot:
    blocks: dict[int, tuple[bytes, int]]   # index -> (content, version)
    size: int
    mtime_ns: int
    ctime_ns: int


@dataclass
class Dirty:
    size: int
    mtime_ns: int
    ctime_ns: int
    blocks: dict[int, bytearray] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)
    attrs_dirty: bool = False

    def nbytes(self) -> int:
        return sum(len(b) for b in self.blocks.values())

    def write(self, index: int, offset: int, data: bytes | memoryview) -> int:
        """Write *data* at *offset* inside block *index* (already loaded);
        returns the change in buffered bytes."""
        buf = self.blocks.setdefault(index, bytearray())
        before = len(buf)
        end = offset + len(data)
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset:end] = data
        self.versions[index] = self.versions.get(index, 0) + 1
        return len(buf) - before

    def cut(self, index: int, length: int) -> None:
        """Keep only the first *length* bytes of buffered block *index*."""
        del self.blocks[index][length:]
        self.versions[index] = self.versions.get(index, 0) + 1

    def drop_from(self, index: int) -> None:
        self.drop_range(index, None)

    def drop_range(self, first: int, stop: int | None) -> None:
        """Forget buffered blocks first..stop-1 (to the end when stop is None)."""
        for i in [i for i in self.blocks if i >= first and (stop is None or i < stop)]:
            del self.blocks[i]
            self.versions.pop(i, None)

    def snapshot(self, skip: set[int] = frozenset()) -> Snapshot:
        return Snapshot({i: (bytes(b), self.versions[i]) for i, b in self.blocks.items()
                         if i not in skip}, self.size, self.mtime_ns, self.ctime_ns)

    def settle(self, snap: Snapshot) -> bool:
        """Forget what *snap* committed; True when nothing is left to flush."""
        for i, (_, ver) in snap.blocks.items():
            if self.versions.get(i) == ver:
                del self.blocks[i]
                del self.versions[i]
        if snap.size == self.size and snap.mtime_ns == self.mtime_ns:
            self.attrs_dirty = False
        self.since = time.monotonic()
        return not self.blocks and not self.attrs_dirty
