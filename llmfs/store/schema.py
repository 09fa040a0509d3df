"""LMDB schema: sub-database names, key layouts and the inode record.

Keys are big-endian so LMDB's byte order is numeric order: a cursor over
``fmap`` walks one file's blocks in offset order, one over ``dirents`` walks a
directory's entries.

=========  ==============================  =================================
database   key                             value
=========  ==============================  =================================
meta       name (ascii)                    value (format, block size, ...)
inodes     ino u64                         :class:`Inode` record, sealed
dirents    parent ino u64 + name           child ino u64, sealed
symlinks   ino u64                         target bytes
xattrs     ino u64 + name                  value
fmap       ino u64 + block index u64       block key (blake2b-256 of raw), sealed
blocks     block key                       frame (see ``codec.frame``), loose
refs       block key                       refcount u32 + written ns u64
packs      pack id u64                     many frames (``store.packs``)
packidx    block key                       where a packed frame is, sealed
packfill   pack id u64                     live/total bytes of a pack, sealed
unpacked   block key                       b"" (a loose frame the compactor is done with)
sparse     pack id u64                     b"" (a pack mostly dead: to rewrite)
models     model short id (8 bytes)        model file bytes
dicts      dictionary id (8 bytes)         zstd dictionary (``llmfs/dictionaries.py``)
orphans    ino u64                         b"" (unlinked while open)
counters   name (ascii)                    u64
=========  ==============================  =================================

*Sealed* records end in a CRC-32 of their key and value (format 2).  LMDB
checks nothing, and a flipped bit in a block map entry or an inode would
otherwise read as wrong bytes (a hole of zeros, another size) where the block
frames' own checksums cannot see it; a seal that does not match makes the
record *damaged*: EIO for what needs it, and a problem for fsck.  Records of
format 1 have no seal (they are told apart by their fixed length) and are
taken as they are.  Format 3 adds packs: a store an older llmfs must not
open, since it would not find packed blocks.
"""
from __future__ import annotations

import hashlib
import stat
import struct
import zlib
from dataclasses import dataclass

FORMAT_VERSION = 3
ROOT_INO = 1
DATABASES = ("meta", "inodes", "dirents", "symlinks", "xattrs", "fmap", "blocks", "refs",
             "models", "orphans", "counters", "packs", "packidx", "packfill", "unpacked",
             "sparse", "dicts")

_U64 = struct.Struct(">Q")
_U64x2 = struct.Struct(">QQ")
_REF = struct.Struct("<IQ")
_INODE = struct.Struct("<IIIIQQqqqQ")
_SEAL = struct.Struct("<I")
INO_SIZE, KEY_SIZE, INODE_SIZE = _U64.size, 32, _INODE.size
# The block key a damaged block map entry reads as: no block has it (a blake2b
# preimage of zeros is out of reach), so it reads as a missing block, EIO.
DAMAGED = bytes(KEY_SIZE)


def seal(key: bytes, value: bytes) -> bytes:
    """*value* as stored under *key*: followed by a CRC-32 of both."""
    return value + _SEAL.pack(zlib.crc32(key + value))


def unseal(key: bytes, stored: bytes, size: int) -> bytes | None:
    """The value of a record of fixed *size* stored under *key*, or None when
    it is damaged (its seal does not match, or its length is wrong)."""
    if len(stored) == size:
        return stored                       # format 1: no seal
    if len(stored) == size + _SEAL.size:
        value = stored[:size]
        if _SEAL.unpack_from(stored, size)[0] == zlib.crc32(key + value):
            return value
    return None


def block_key(raw: bytes) -> bytes:
    """Content address of a block: identical blocks share one frame.  A
    cryptographic hash, so crafted collisions cannot swap one user's data
    for another's."""
    return hashlib.blake2b(raw, digest_size=32).digest()


def ino_key(ino: int) -> bytes:
    return _U64.pack(ino)


def ino_of(key: bytes) -> int:
    return _U64.unpack_from(key)[0]


def fmap_key(ino: int, index: int) -> bytes:
    return _U64x2.pack(ino, index)


def fmap_index(key: bytes) -> int:
    return _U64x2.unpack(key)[1]


def pack_ref(count: int, written_ns: int, tried: bytes = b"") -> bytes:
    """A block's refcount and write time; *tried* (8 bytes, optional) marks the
    set of encoding models the compactor already tried on it without a gain."""
    return _REF.pack(count, written_ns) + tried


def unpack_ref(value: bytes) -> tuple[int, int]:
    return _REF.unpack(value[:_REF.size])


def ref_tried(value: bytes) -> bytes:
    """The tried-models tag of a refs value (b"" when never tried)."""
    return value[_REF.size:]


@dataclass
class Inode:
    """One inode's attributes.  ``nblocks`` counts the file's stored (non-hole)
    blocks, so ``st_blocks`` is known without walking the block map."""
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int = 0
    rdev: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nblocks: int = 0

    def pack(self) -> bytes:
        return _INODE.pack(self.mode, self.uid, self.gid, self.nlink, self.size, self.rdev,
                           self.atime_ns, self.mtime_ns, self.ctime_ns, self.nblocks)

    @classmethod
    def unpack(cls, data: bytes) -> "Inode":
        return cls(*_INODE.unpack(data))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)
