"""The ``.llmz`` container: a stream of block frames, usable without FUSE.

Layout (little endian)::

    "LLMZ" | version u8 | block_size u32 | model id 32 bytes (zeros: none) | xxh32 u32
    then per block:  length u32 (> 0) | frame
    then the end:    0 u32 | raw total u64 | block count u32 | xxh32 of those 12 bytes

Written and read as a stream (stdin/stdout work), in batches of blocks so the
model encodes and decodes several blocks at once.  A missing end record means
the file was truncated.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

import xxhash

from .frame import FrameError
from .policy import BlockCodec

MAGIC = b"LLMZ"
VERSION = 1
_HEAD = struct.Struct("<4sBI32s")
_U32 = struct.Struct("<I")
_END = struct.Struct("<QI")


class ContainerError(ValueError):
    """A file that is not a readable llmz container."""


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ContainerError(f"truncated container (ends inside {what})")
    return data


def _blocks(f: BinaryIO, size: int) -> Iterator[bytes]:
    while True:
        data = f.read(size)
        while data and len(data) < size:  # pipes return short reads
            more = f.read(size - len(data))
            if not more:
                break
            data += more
        if not data:
            return
        yield data


def compress_stream(src: BinaryIO, dst: BinaryIO, codec: BlockCodec, block_size: int,
                    batch: int = 8, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Compress *src* into *dst*; returns (raw bytes, bytes written)."""
    model_id = codec.model.id if codec.model is not None else bytes(32)
    head = _HEAD.pack(MAGIC, VERSION, block_size, model_id)
    dst.write(head + _U32.pack(xxhash.xxh32_intdigest(head)))
    written, total, count = len(head) + 4, 0, 0
    pending: list[bytes] = []

    def flush() -> None:
        nonlocal written
        for frame in codec.encode_blocks(pending):
            dst.write(_U32.pack(len(frame)) + frame)
            written += 4 + len(frame)
        if progress:
            progress(sum(map(len, pending)))
        pending.clear()

    for block in _blocks(src, block_size):
        pending.append(block)
        total += len(block)
        count += 1
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    end = _END.pack(total, count)
    dst.write(_U32.pack(0) + end + _U32.pack(xxhash.xxh32_intdigest(end)))
    return total, written + 4 + len(end) + 4


def read_header(src: BinaryIO) -> tuple[int, bytes]:
    """(block size, model id) of a container; raises ContainerError."""
    head = src.read(_HEAD.size + 4)
    if len(head) < 4 or head[:4] != MAGIC:
        raise ContainerError("not an llmz file (bad magic)")
    if len(head) < _HEAD.size + 4:
        raise ContainerError("truncated container (ends inside the header)")
    magic, version, block_size, model_id = _HEAD.unpack_from(head)
    if version != VERSION:
        raise ContainerError(f"unsupported llmz version {version} (this llmfs reads {VERSION})")
    if _U32.unpack_from(head, _HEAD.size)[0] != xxhash.xxh32_intdigest(head[:_HEAD.size]):
        raise ContainerError("corrupted container header")
    return block_size, model_id


def decompress_stream(src: BinaryIO, dst: BinaryIO, codec: BlockCodec, block_size: int,
                      batch: int = 8,
                      progress: Callable[[int], None] | None = None) -> int:
    """Decompress the frames of *src* (positioned after ``read_header``) into *dst*.

    Returns bytes written; raises ContainerError.
    """
    total = count = 0
    pending: list[bytes] = []

    def flush() -> None:
        nonlocal total
        try:
            blocks = codec.decode_blocks(pending)
        except FrameError as e:
            raise ContainerError(f"corrupted block after byte {total}: {e}") from None
        for b in blocks:
            dst.write(b)
            total += len(b)
        if progress:
            progress(sum(map(len, blocks)))
        pending.clear()

    while True:
        (n,) = _U32.unpack(_read_exact(src, 4, "a block length"))
        if n == 0:
            break
        if n > 2 * block_size + 4096:
            raise ContainerError("corrupted container (implausible block length)")
        pending.append(_read_exact(src, n, "a block"))
        count += 1
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    end = _read_exact(src, _END.size + 4, "the end record")
    exp_total, exp_count = _END.unpack_from(end)
    if _U32.unpack_from(end, _END.size)[0] != xxhash.xxh32_intdigest(end[:_END.size]):
        raise ContainerError("corrupted container end record")
    if (exp_total, exp_count) != (total, count):
        raise ContainerError("container end record disagrees with its blocks")
    if src.read(1):
        raise ContainerError("trailing data after the end record")
    return total
