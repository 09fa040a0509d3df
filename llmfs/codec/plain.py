"""The model-free codecs (raw, zstd, LZMA, PPMd, ZPAQ): the write tier, the
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
the block's length, so no end mark is coded.  A ZPAQ payload is one ZPAQ
block as libzpaq writes it (the `zpaq` package, level 5: a context-mixing
model chosen for the block, described in the block's own header, so any
ZPAQ decoder reads it); the memory its header asks for (the virtual
machine's arrays and every component of the model) is counted before
decoding, so a damaged header cannot make the decoder allocate gigabytes.  The
block's type (text, x86 code) is told to libzpaq here (``zpaq_method``): the
package's own guess never takes a block from the middle of a program for
code, and the x86 call transform it then skips saves 3-11 % of such blocks.

A zdict frame is zstd with one of the store's dictionaries (trained on its
small files, ``llmfs/dictionaries.py``), named by id in the frame header.
Dictionaries are content-addressed (the first 8 bytes of their blake2b-256),
so one table per process serves every store it opens.
"""
from __future__ import annotations

import hashlib
import lzma

import numpy as np
import pyppmd
import zpaq
import zstandard

from .frame import Codec, Frame, FrameError, checksum


SMALL_WRITE = 16 << 10   # fresh writes up to this size also try the store's dictionary
_DICTIONARIES: dict[bytes, zstandard.ZstdCompressionDict] = {}


def dictionary_id(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()[:8]


def add_dictionary(data: bytes) -> bytes:
    """Make a zstd dictionary known to this process; returns its id."""
    did = dictionary_id(data)
    if did not in _DICTIONARIES:
        _DICTIONARIES[did] = zstandard.ZstdCompressionDict(data)
    return did


def dictionary_data(dictionary: bytes) -> bytes:
    """The bytes of the dictionary of id *dictionary* (known to this process)."""
    return _DICTIONARIES[dictionary].as_bytes()


def zstd_frame(raw: bytes, level: int, dictionary: bytes | None = None,
               digest: bytes | None = None) -> Frame:
    """A zstd frame of *raw* at *level*, with the dictionary of id *dictionary*
    (known to this process) as a zdict frame."""
    digest = checksum(raw) if digest is None else digest
    if dictionary is None:
        return Frame(Codec.ZSTD, len(raw), digest, zstandard.ZstdCompressor(level=level).compress(raw))
    z = zstandard.ZstdCompressor(level=level, dict_data=_DICTIONARIES[dictionary],
                                 write_dict_id=False).compress(raw)
    return Frame(Codec.ZDICT, len(raw), digest, z, dictionary)


def fast_frame(raw: bytes, level: int = 1, dictionary: bytes | None = None) -> bytes:
    """The write tier: a zstd frame at a fast level (a small block also tries
    the store's *dictionary*, keeping the smaller), or raw when zstd does not
    shrink the block.  The compactor upgrades it later."""
    digest = checksum(raw)
    best = Frame(Codec.RAW, len(raw), digest, raw)
    if raw:
        for d in (None, dictionary) if dictionary and len(raw) <= SMALL_WRITE else (None,):
            z = zstd_frame(raw, level, d, digest)
            if len(z.payload) < len(best.payload):
                best = z
    return best.pack()


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


ZPAQ_LEVEL = 5
_ZPAQ_TAG = b"7kSt\xa01\x83\xd3\x8c\xb2(\xb0\xd3zPQ"   # locator tag, then "zPQ"
_ZPAQ_MAX_BITS = 24      # log2 of the ZPAQL machine's arrays (level 5 writes 9, 16, 0, 0)
_ZPAQ_MAX_MEMORY = 1 << 29   # a model's memory (level 5: 84 MiB for a 64 KiB block, 102 for 1 MiB)
# the context model's components: type id -> bytes in the header, and the memory
# libzpaq gives one (ZPAQL::memory) from its size field s (2**s) and the next bytes
_ZPAQ_COMPONENTS = {
    1: (2, lambda s, b: 0),                        # CONS
    2: (3, lambda s, b: 4 * s),                    # CM
    3: (2, lambda s, b: 64 * s + 1024),            # ICM
    4: (3, lambda s, b: 4 * s + (1 << b[0])),      # MATCH (+ its buffer)
    5: (4, lambda s, b: 0),                        # AVG
    6: (6, lambda s, b: 2 * s),                    # MIX2
    7: (6, lambda s, b: 4 * s * b[1]),             # MIX (x its inputs)
    8: (3, lambda s, b: 64 * s + 2048),            # ISSE
    9: (5, lambda s, b: 128 * s),                  # SSE
}


def zpaq_memory(p: bytes) -> int | None:
    """The memory a ZPAQ payload's header asks the decoder for (as libzpaq
    counts it), or None when the header does not parse: the tag, "zPQ",
    level 1 or 2, block type 1, header size u16, the ZPAQL machine's array
    sizes hh hm ph pm (log2), the component count, then the components."""
    if len(p) < 25 or not p.startswith(_ZPAQ_TAG) or p[16] not in (1, 2) or p[17] != 1 \
            or max(p[20:24]) > _ZPAQ_MAX_BITS:
        return None
    hh, hm, ph, pm, n = p[20:25]
    memory = (4 << hh) + (1 << hm) + (4 << ph) + (1 << pm)
    at, end = 25, 20 + int.from_bytes(p[18:20], "little")
    for _ in range(n):
        if at >= min(end, len(p)) or p[at] not in _ZPAQ_COMPONENTS:
            return None
        size, cost = _ZPAQ_COMPONENTS[p[at]]
        if at + size > min(end, len(p)) or p[at + 1] > 32:
            return None
        memory += cost(1 << p[at + 1], p[at + 2:at + size])
        at += size
    return memory


_CALL_RATE = 1 / 256      # x86 calls/jumps (E8/E9 + rel32) per byte that make a block code


def zpaq_method(raw: bytes) -> str:
    """libzpaq's method string for *raw*: level 5 with the block type
    ("5,0,t": t = 1 text, + 2 x86 code, which adds the E8/E9 call transform).

    The text test and the first code test are the zpaq CLI's (what the
    package's ``hints`` compute): over each byte value's latest follower,
    spaces after letters and punctuation make text, control bytes and stray
    UTF-8 lead bytes unmake it, and five values last followed by 0x8B (MOV)
    make code.  That code test sees a file's first block (headers, symbol
    tables) and rarely the middle of a program, so code is also a block
    with more than one call or jump (E8/E9) per 256 bytes whose 32-bit
    offset's top byte is 00 or FF, as near calls' are.  Chosen on ELF
    blocks and system data files, not the benchmark files: code blocks
    score 0.013-0.038 (the transform saves 3-11 %), others at most 0.001
    (it costs them 1-4 %)."""
    a = np.frombuffer(raw, dtype=np.uint8)
    n = len(a)
    last = np.full(256, -1, dtype=np.int64)         # where each byte value was last followed
    np.maximum.at(last, a[:-1], np.arange(1, n))
    seen = last >= 0
    follower = np.where(seen, a[np.maximum(last, 0)], 0)
    ch = np.arange(256)
    alnum = (ch >= 48) & (ch <= 57) | (ch >= 65) & (ch <= 90) | (ch >= 97) & (ch <= 122)
    control = (ch < 9) | (ch == 11) | (ch == 12) | (ch >= 14) & (ch <= 31) | (ch >= 240)
    lead = (ch >= 192) & (ch < 240) & seen & ((follower < 128) | (follower >= 192))
    text = (int((seen & (follower == 32) & (alnum | (ch == 46) | (ch == 44))).sum())
            - int((seen & (follower != 0) & control).sum()) - int(lead.sum())) >= 3
    calls = int((((a[:-4] == 0xE8) | (a[:-4] == 0xE9)) & ((a[4:] == 0) | (a[4:] == 0xFF))).sum())
    code = int((seen & (follower == 139)).sum()) >= 5 or calls > n * _CALL_RATE
    return f"{ZPAQ_LEVEL},0,{int(text) + 2 * int(code)}"


def zpaq_payload(raw: bytes) -> bytes:
    """A ZPAQ block of *raw* (about 0.15 MB/s each way on this project's
    machine: 0.4 s a 64 KiB block, compaction time and cold reads only)."""
    return zpaq.compress(raw, threads=1, method=zpaq_method(raw))


def unzpaq(f: Frame) -> bytes | None:
    """Payload of a ZPAQ frame, or None when it is damaged."""
    p = f.payload
    memory = zpaq_memory(p)
    if memory is None or memory > _ZPAQ_MAX_MEMORY:
        return None
    try:
        data = zpaq.decompress(p)
    except (zpaq.Error, MemoryError, ValueError):
        return None
    return data if len(data) == f.raw_len else None


def plain_bytes(f: Frame) -> bytes | None:
    """Payload of a raw, zstd, zdict, LZMA, PPMd or ZPAQ frame (not
    checksum-verified), or None when it is damaged."""
    if f.codec == Codec.RAW:
        return f.payload
    if f.codec in (Codec.ZSTD, Codec.ZDICT):
        return unzstd(f)
    if f.codec == Codec.ZPAQ:
        return unzpaq(f)
    return unlzma(f) if f.codec == Codec.LZMA else unppmd(f)


def missing(f: Frame) -> FrameError | None:
    """The error for a zdict frame whose dictionary this process lacks."""
    if f.codec == Codec.ZDICT and f.model not in _DICTIONARIES:
        return FrameError(f"block needs unknown dictionary {f.model.hex()}")
    return None


def frame_codec(frame: bytes) -> Codec:
    """The codec of a stored frame (header parse only; no checksum of the raw bytes)."""
    return Frame.unpack(frame).codec


def unzstd(f: Frame) -> bytes | None:
    """Payload of a zstd or zdict frame, or None when it is damaged (or its
    dictionary unknown)."""
    try:  # a damaged size field must not make zstd allocate it
        if zstandard.frame_content_size(f.payload) != f.raw_len:
            return None
        if f.codec == Codec.ZDICT:
            if f.model not in _DICTIONARIES:
                return None
            dec = zstandard.ZstdDecompressor(dict_data=_DICTIONARIES[f.model])
        else:
            dec = zstandard.ZstdDecompressor()
        return dec.decompress(f.payload, max_output_size=f.raw_len)
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
    if (err := missing(f)) is not None:
        return err
    data = plain_bytes(f)
    if data is None or len(data) != f.raw_len or checksum(data) != f.digest:
        return FrameError("checksum mismatch: decoded bytes differ from the original")
    return data
