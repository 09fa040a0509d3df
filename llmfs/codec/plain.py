"""The model-free codecs (raw, zstd): the write tier and their decoding.

Kept apart from the llm codec so the filesystem can write and read zstd
blocks without importing torch: a store that holds no llm block never pays
for loading a model.
"""
from __future__ import annotations

import zstandard

from .frame import Codec, Frame, FrameError, checksum


def fast_frame(raw: bytes, level: int = 1) -> bytes:
    """The write tier: a zstd frame at a fast level, or raw when zstd does not
    shrink the block.  The compactor upgrades it later."""
    digest = checksum(raw)
    z = zstandard.ZstdCompressor(level=level).compress(raw) if raw else b""
    if raw and len(z) < len(raw):
        return Frame(Codec.ZSTD, len(raw), digest, z).pack()
    return Frame(Codec.RAW, len(raw), digest, raw).pack()


def frame_codec(frame: bytes) -> Codec:
    """The codec of a stored frame (header parse only; no checksum of the raw bytes)."""
    return Frame.unpack(frame).codec


def unzstd(f: Frame) -> bytes | None:
    """Payload of a zstd frame, or None when it is damaged."""
    try:  # a damaged size field must not make zstd allocate it
        if zstandard.frame_content_size(f.payload) != f.raw_len:
            return None
        return zstandard.ZstdDecompressor().decompress(f.payload, max_output_size=f.raw_len)
    except zstandard.ZstdError:
        return None


def decode_plain(frame: bytes) -> bytes | FrameError:
    """Original bytes of a raw or zstd frame, checksum verified, or the error."""
    try:
        f = Frame.unpack(frame)
    except FrameError as e:
        return e
    if f.codec == Codec.LLM:
        return FrameError("llm frame needs the model")
    data = f.payload if f.codec == Codec.RAW else unzstd(f)
    if data is None or len(data) != f.raw_len or checksum(data) != f.digest:
        return FrameError("checksum mismatch: decoded bytes differ from the original")
    return data
