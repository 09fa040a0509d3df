"""Range coding with exact integer tables (constriction), and when the encoder gives up."""
from pathlib import Path

import constriction
import numpy as np
import zstandard
from hypothesis import given, settings, strategies as st

from llmfs.codec.frame import VERSION
from llmfs.codec.llm import _FAMILY, LLMCodec, ideal_bits, three_buckets
from llmfs.codec.segments import SEGMENT
from llmfs.codec.mixer import symbol_stats
from llmfs.model.engine import FREQ_BITS

SAMPLES = Path(__file__).resolve().parent.parent / "llmfs" / "samples"


def tables(seed: int, n: int, vocab: int, peaked: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, vocab)) * peaked
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    total = (1 << FREQ_BITS) - vocab
    f = np.floor(p * total).astype(np.int64)
    f[np.arange(n), f.argmax(1)] += total - f.sum(1)
    syms = np.array([rng.choice(vocab, p=(f[i] + 1) / (1 << FREQ_BITS)) for i in range(n)])
    return f, syms


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.sampled_from([3, 17, 2048]),
       st.floats(0.1, 12), st.booleans())
def test_three_bucket_encoding_equals_full_table(seed, n, vocab, peaked, edges):
    f, syms = tables(seed, n, vocab, peaked)
    if edges:  # first and last symbols take the special buckets
        syms[::3] = 0
        syms[1::3] = vocab - 1
    full = constriction.stream.queue.RangeEncoder()
    full.encode(syms.astype(np.int32), _FAMILY, f.astype(np.float64))
    fast = constriction.stream.queue.RangeEncoder()
    fast.encode(*three_buckets(symbol_stats(f, syms), vocab))
    words = fast.get_compressed()
    assert np.array_equal(full.get_compressed(), words)
    dec = constriction.stream.queue.RangeDecoder(words)
    table = f.astype(np.float64)
    assert [int(dec.decode(_FAMILY, table[i:i + 1])[0]) for i in range(n)] == syms.tolist()


def test_cost_matches_ideal_within_a_word():
    f, syms = tables(7, 2000, 2048, 3.0)
    enc = constriction.stream.queue.RangeEncoder()
    stats = symbol_stats(f, syms)
    enc.encode(*three_buckets(stats, 2048))
    ideal = ideal_bits(stats)
    assert ideal <= 32 * len(enc.get_compressed()) <= ideal * 1.001 + 64


def test_long_block_is_several_segments_and_decodes(model):
    from llmfs.codec.llm import LLMCodec
    from llmfs.codec.segments import SEGMENT, split_segments

    from conftest import PROSE

    codec = LLMCodec(model)
    block = PROSE * 40                                   # > 2 segments of tokens
    enc = codec.encode(block)
    streams = split_segments(enc.payload, enc.n_tokens)
    assert len(streams) == -(-enc.n_tokens // SEGMENT) >= 3
    assert model.tokenizer.decode(codec.decode_many([enc])[0]) == block
    bad = bytearray(enc.payload)
    bad[3] ^= 1                                          # damaged segment table
    assert codec.decode_many([enc._replace(payload=bytes(bad))]) == [None]


def test_give_up_is_predicted_for_the_whole_block_not_the_first_window(model):
    """A block that repeats itself: the first window of each stream costs far
    more than zstd's whole-block rate (the old test gave up on it there), yet
    the model, which learns the repeats, wins the whole block."""
    block = ((SAMPLES / "server.go").read_bytes()[:24000] * 3)[:65536]
    zstd_bpb = 8 * len(zstandard.ZstdCompressor(level=19).compress(block)) / len(block)
    codec = LLMCodec(model)
    first = []
    ids = model.tokenizer.encode(block)
    codec._stats(ids, SEGMENT, VERSION, lambda bits, seen: first.append(bits / len(seen)))
    assert first[0] > zstd_bpb                          # behind zstd after the first window
    enc = codec.encode(block, abort_bpb=zstd_bpb)
    assert enc is not None and 8 * len(enc.payload) < 0.8 * zstd_bpb * len(block)
    assert codec.encode(block, abort_bpb=0.3) is None   # out of reach: given up
