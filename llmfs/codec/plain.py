"""The model-free codecs (raw, zstd, LZMA, PPMd): the write tier, the
compaction fallbacks and their decoding.

Kept apart from the llm codec so the filesystem can write and read these
blocks without importing torch: a store that holds no llm block never pays
for loading a model.

An LZMA payload is one byte naming the filter chain (``LZMA_CHAINS``) and
the raw LZMA2 stream: no .xz container (about 60 bytes a block), and the
dictionary is the block's size rounded up to a power of two, so the decoder
knows it from the frame header and never allocates more than the block
needs.  A PPMd payload (var. I, the `pyppmd` package) is the model order
and log2 of its memory, one byte each, then the stream; the decoder is told
the block's length, so no end mark is coded.
"""
from __future__ import annotations

import lzma

import pyppmd
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


_LZMA2 = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}
# filter chains by id: LZMA2 as xz -9e, and with the x86 branch converter (executables)
LZMA_CHAINS: tuple[tuple[dict, ...], ...] = ((_LZMA2,), ({"id": lzma.FILTER_X86}, _LZMA2))


def _chain(chain_id: int, raw_len: int) -> list[dict]:
    dict_size = 1 << max(12, (raw_len - 1).bit_length())
    return [dict(f, dict_size=dict_size) if f["id"] == lzma.FILTER_LZMA2 else f
            for f in LZMA_CHAINS[chain_id]]


def lzma_payload(raw: bytes) -> bytes:
    """The smallest LZMA payload of *raw* over the filter chains (about 30 ms
    each per 64 KiB: compaction time only)."""
    return min((bytes([i]) + lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_chain(i, len(raw)))
                for i in range(len(LZMA_CHAINS))), key=len)


def unlzma(f: Frame) -> bytes | None:
    """Payload of an LZMA frame, or None when it is damaged."""
    if not f.payload or f.payload[0] >= len(LZMA_CHAINS):
        return None
    dec = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_chain(f.payload[0], f.raw_len))
    try:
        data = dec.decompress(f.payload[1:], max_length=f.raw_len)
    except lzma.LZMAError:
        return None
    return data if dec.eof else None


PPMD_ORDER = 8           # PPMd's context order: the peer llmfs is measured against
PPMD_MEM_LOG2 = 24       # 16 MiB: a 64 KiB block never fills it (no model restart)


def ppmd_payload(raw: bytes) -> bytes:
    """A PPMd var. I payload of *raw* (about 10 ms per 64 KiB each way)."""
    enc = pyppmd.Ppmd8Encoder(PPMD_ORDER, 1 << PPMD_MEM_LOG2, 0)
    return bytes([PPMD_ORDER, PPMD_MEM_LOG2]) + enc.encode(raw) + enc.flush()


def unppmd(f: Frame) -> bytes | None:
    """Payload of a PPMd frame, or None when it is damaged (a wrong stream
    that decodes to the right length is caught by the raw checksum)."""
    if len(f.payload) < 2 or not 2 <= f.payload[0] <= 64 or not 16 <= f.payload[1] <= 28:
        return None
    dec = pyppmd.Ppmd8Decoder(f.payload[0], 1 << f.payload[1], 0)
    try:
        return dec.decode(f.payload[2:], f.raw_len)
    except (pyppmd.PpmdError, ValueError):
        return None


def plain_bytes(f: Frame) -> bytes | None:
    """Payload of a raw, zstd, LZMA or PPMd frame (not checksum-verified), or
    None when it is damaged."""
    if f.codec == Codec.RAW:
        return f.payload
    if f.codec == Codec.ZSTD:
        return unzstd(f)
    return unlzma(f) if f.codec == Codec.LZMA else unppmd(f)


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
    """Original bytes of a model-free frame, checksum verified, or the error."""
    try:
        f = Frame.unpack(frame)
    except FrameError as e:
        return e
    if f.codec == Codec.LLM:
        return FrameError("llm frame needs the model")
    data = plain_bytes(f)
    if data is None or len(data) != f.raw_len or checksum(data) != f.digest:
        return FrameError("checksum mismatch: decoded bytes differ from the original")
    return data
