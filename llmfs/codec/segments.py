"""Segments: the independent range-coder streams of one llm payload.

A block's tokens are cut into segments of ``SEGMENT`` tokens, each coded as
an independent stream that starts from a fresh context.  Decoding is
token-serial within a stream, so segments are what lets one block decode as
a batch: a 64 KiB block is about a dozen streams instead of one 23k-step
chain.  The price is the model context lost at each segment start (measured
in docs/ARCHITECTURE.md, "Segments"); the match model (``match.py``) looks
across the segments of a block, which decode in lockstep.

llm payload: ``u16 count``, then per segment ``u32 tokens, u32 bytes``, then
the segments' range-coder words in order.  No torch here: the filesystem
daemon splits and joins payloads while worker processes run the model.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

SEGMENT = 2048
_COUNT = struct.Struct("<H")
_SEG = struct.Struct("<II")

Stream = tuple[bytes, int]   # one segment: range-coder words, token count


class Coded(NamedTuple):
    """An llm payload (or one segment of it) as the decoder needs it."""
    payload: bytes
    n_tokens: int
    version: int         # frame version: what the model's tables were mixed with (frame.py)


def join_segments(streams: list[Stream]) -> bytes:
    return (_COUNT.pack(len(streams)) + b"".join(_SEG.pack(n, len(p)) for p, n in streams)
            + b"".join(p for p, _ in streams))


def regroup(owners: list[int], parts: list[list[int] | None],
            count: int) -> list[list[int] | None]:
    """Token ids of *count* items from the decoded *parts* they were cut into
    (``owners[k]``: the item of part k, in order); an item is None if any of
    its parts is."""
    out: list[list[int] | None] = [[] for _ in range(count)]
    for i, toks in zip(owners, parts):
        if out[i] is None or toks is None:
            out[i] = None
        else:
            out[i].extend(toks)
    return out


def split_segments(payload: bytes, n_tokens: int) -> list[Stream] | None:
    """The streams of an llm payload, or None when its table is inconsistent."""
    if len(payload) < _COUNT.size:
        return None
    (count,) = _COUNT.unpack_from(payload)
    pos = _COUNT.size + count * _SEG.size
    if pos > len(payload):
        return None
    streams = []
    for k in range(count):
        n, size = _SEG.unpack_from(payload, _COUNT.size + k * _SEG.size)
        streams.append((payload[pos:pos + size], n))
        pos += size
    if pos != len(payload) or sum(n for _, n in streams) != n_tokens:
        return None
    return streams
