"""Frames: round trip, and every bit flip or truncation is a clean error."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from conftest import PROSE, x86_like
from llmfs.codec.frame import NGRAMS, READS, Codec, Frame, FrameError, checksum
from llmfs.codec.policy import BlockCodec


@settings(max_examples=200)
@given(st.sampled_from(list(Codec)), st.binary(max_size=300),
       st.binary(min_size=8, max_size=8), st.integers(0, 1000), st.sampled_from(READS))
def test_pack_unpack(codec, payload, model, n, version):
    f = Frame(codec, 1000, checksum(payload), payload,
              model if codec in (Codec.LLM, Codec.ZDICT) else b"",
              n if codec == Codec.LLM else 0, version)
    assert Frame.unpack(f.pack()) == f


def test_new_frames_are_mixed_with_ngrams_and_unknown_versions_are_refused():
    assert Frame(Codec.LLM, 1, bytes(16), b"", bytes(8), 1).version == NGRAMS == max(READS)
    future = Frame(Codec.ZSTD, 1, bytes(16), b"", version=max(READS) + 1).pack()
    with pytest.raises(FrameError, match="unsupported frame version 5"):
        Frame.unpack(future)


def corrupt_all(frame: bytes):
    for bit in range(len(frame) * 8):
        b = bytearray(frame)
        b[bit // 8] ^= 1 << (bit % 8)
        yield bytes(b)
    for n in range(len(frame)):
        yield frame[:n]


_rng = random.Random(5)
NUMBERS = " ".join(str(_rng.randrange(10 ** 6)) for _ in range(40)).encode()


@pytest.mark.parametrize("block, kind", [(PROSE[:120], Codec.LLM), (NUMBERS, Codec.ZSTD),
                                         (x86_like(100), Codec.LZMA), (PROSE[:300], Codec.PPMD),
                                         (b"\x8f\x01" + bytes(range(40)), Codec.RAW)],
                         ids=["llm", "zstd", "lzma", "ppmd", "raw"])
def test_every_flip_and_truncation_is_an_error(model, block, kind):
    codec = BlockCodec(model if kind == Codec.LLM else None)
    frame = codec.encode_blocks([block])[0]
    assert Frame.unpack(frame).codec == kind
    damaged = list(corrupt_all(frame))
    results = codec.decode_each(damaged)  # one batch: fast even for the llm frame
    for bad, res in zip(damaged, results):
        # an error, or (only where the flip hit bits the coder never reads) the exact bytes
        assert isinstance(res, FrameError) or res == block, bad
    errors = sum(isinstance(r, FrameError) for r in results)
    assert errors >= len(damaged) * 0.95
    with pytest.raises(FrameError):
        codec.decode_blocks([damaged[0]])
