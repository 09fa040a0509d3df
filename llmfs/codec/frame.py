"""Block frames: the self-describing value stored for every block.

Layout (little endian)::

    magic "LB" | version u8 | codec u8 | raw_len u32 | xxh3-128(raw) 16 bytes
    | codec extension (llm: model id 8 bytes, token count u32; zstd with a
      dictionary: dictionary id 8 bytes)
    | xxh32 of everything before it, 4 bytes | payload

The header checksum turns any damaged header field into a clean error before
decoding starts; the checksum of the raw bytes is re-checked after every
decode, so a decoding mismatch or bit rot is an error, never wrong bytes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

import xxhash

MAGIC = b"LB"
# llm payloads by frame version: 2 segmented (codec/segments.py), coded with the model
# alone; 3 mixed with the match model (codec/match.py); 4 and with n-gram caches (ngram.py)
MODEL_ALONE, MATCH, NGRAMS = 2, 3, 4
VERSION = NGRAMS  # MODEL_ALONE is still written for llm payloads the mixing did not shrink
READS = (2, 3, 4)
MAX_BLOCK = 1 << 26  # 64 MiB: larger raw lengths are treated as damage
_FIXED = struct.Struct("<2sBBI16s")
_LLM_EXT = struct.Struct("<8sI")
_DICT_EXT = struct.Struct("<8s")
_CRC = struct.Struct("<I")


class Codec(IntEnum):
    RAW = 0
    ZSTD = 1
    LLM = 2
    LZMA = 3    # raw LZMA2 (filter chain id byte first; plain.py), a compaction-time fallback
    PPMD = 4    # PPMd var. I (order and memory bytes first; plain.py), a compaction-time fallback
    ZDICT = 5   # zstd with one of the store's dictionaries (its id in the header; plain.py)
    ZPAQ = 6    # a ZPAQ block, level 5 (plain.py), a compaction-time fallback


class FrameError(ValueError):
    """A frame that cannot be decoded to its original bytes."""


class Head(NamedTuple):
    """What a frame's header says about it, without its payload (what the
    compactor and ``llmfs stats`` look at; packs keep it in their index)."""
    codec: Codec
    version: int
    raw_len: int
    model: bytes = b""


def checksum(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


@dataclass(frozen=True)
class Frame:
    codec: Codec
    raw_len: int
    digest: bytes
    payload: bytes
    model: bytes = b""   # llm: short model id; zdict: dictionary id (what decoding needs)
    n_tokens: int = 0    # llm only
    version: int = VERSION

    def pack(self) -> bytes:
        head = _FIXED.pack(MAGIC, self.version, self.codec, self.raw_len, self.digest)
        if self.codec == Codec.LLM:
            head += _LLM_EXT.pack(self.model, self.n_tokens)
        elif self.codec == Codec.ZDICT:
            head += _DICT_EXT.pack(self.model)
        return head + _CRC.pack(xxhash.xxh32_intdigest(head)) + self.payload

    @property
    def head(self) -> Head:
        return Head(self.codec, self.version, self.raw_len, self.model)

    @classmethod
    def unpack(cls, data: bytes) -> "Frame":
        data = bytes(data)
        head, digest, n_tokens, pos = _parse(data)
        return cls(head.codec, head.raw_len, digest, data[pos:], head.model, n_tokens,
                   head.version)


def frame_head(data: bytes) -> Head:
    """The header of frame *data*, checked, without copying its payload."""
    return _parse(data)[0]


def _parse(data: bytes) -> tuple[Head, bytes, int, int]:
    """(head, raw digest, token count, payload offset) of a frame."""
    if len(data) < _FIXED.size + _CRC.size:
        raise FrameError("frame truncated")
    magic, version, codec, raw_len, digest = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("not a block frame (bad magic)")
    if version not in READS:
        raise FrameError(f"unsupported frame version {version} "
                         f"(this llmfs reads {', '.join(map(str, READS))})")
    try:
        codec = Codec(codec)
    except ValueError:
        raise FrameError(f"unknown codec id {codec}") from None
    pos, model, n_tokens = _FIXED.size, b"", 0
    if codec == Codec.LLM:
        if len(data) < pos + _LLM_EXT.size + _CRC.size:
            raise FrameError("frame truncated")
        model, n_tokens = _LLM_EXT.unpack_from(data, pos)
        pos += _LLM_EXT.size
    elif codec == Codec.ZDICT:
        if len(data) < pos + _DICT_EXT.size + _CRC.size:
            raise FrameError("frame truncated")
        (model,) = _DICT_EXT.unpack_from(data, pos)
        pos += _DICT_EXT.size
    (crc,) = _CRC.unpack_from(data, pos)
    if crc != xxhash.xxh32_intdigest(data[:pos]):
        raise FrameError("frame header checksum mismatch")
    if raw_len > MAX_BLOCK or n_tokens > raw_len:
        raise FrameError("implausible frame header")
    return Head(codec, version, raw_len, model), digest, n_tokens, pos + _CRC.size
