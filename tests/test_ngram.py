"""The n-gram caches: exact tables, lockstep visibility, learnt weights, and
their gain on real inference."""
import random

import numpy as np
from hypothesis import given, settings, strategies as st

from conftest import PROSE
from llmfs.codec.frame import MATCH, NGRAMS
from llmfs.codec.llm import LLMCodec
from llmfs.codec.ngram import DENSE, FLOOR, ONE, NGramGroup
from llmfs.codec.segments import split_segments
from llmfs.model.engine import FREQ_BITS

TOTAL = 1 << FREQ_BITS


def flat(rows: int, vocab: int) -> np.ndarray:
    """Model tables that know nothing: every token alike."""
    t = np.full((rows, vocab), (TOTAL - vocab) // vocab, dtype=np.int64)
    t[:, 0] += TOTAL - vocab - t.sum(1)
    return t


def bits(tables: np.ndarray, syms: list[int]) -> float:
    return float(np.log2(TOTAL / (tables[np.arange(len(syms)), syms] + 1.0)).sum())


def run(group: NGramGroup, streams: list[list[int]], tables) -> tuple[float, float]:
    """Code *streams* in lockstep; (bits with the model's tables, bits mixed)."""
    model = mixed = 0.0
    for s in range(max(map(len, streams))):
        ids = [i for i, seq in enumerate(streams) if s < len(seq)]
        syms = [streams[i][s] for i in ids]
        t = tables(ids, syms)
        m = group.mix(t.copy(), ids)
        model, mixed = model + bits(t, syms), mixed + bits(m, syms)
        group.learn(ids, t, syms)
    return model, mixed


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 50, 2048]), st.integers(1, 4))
def test_mixed_tables_keep_the_coders_total(seed, vocab, n_streams):
    """Every mixed row sums to the model's total and has no negative entry,
    however skewed the model and the counts (a context past DENSE included)."""
    rng = np.random.default_rng(seed)
    group = NGramGroup(n_streams, vocab)
    for _ in range(60):
        ids = sorted(rng.choice(n_streams, rng.integers(1, n_streams + 1), replace=False).tolist())
        t = np.zeros((len(ids), vocab), dtype=np.int64)
        for row in t:                      # random, or all mass on one token
            if rng.random() < 0.3:
                row[rng.integers(vocab)] = TOTAL - vocab
            else:
                row[:] = rng.multinomial(TOTAL - vocab, rng.dirichlet(np.ones(vocab)))
        m = group.mix(t.copy(), ids)
        assert (m.sum(1) == TOTAL - vocab).all() and (m >= 0).all()
        group.learn(ids, t, rng.integers(0, min(vocab, DENSE + 8), len(ids)).tolist())
    assert all(FLOOR <= w.sum() <= ONE - FLOOR for w in group.weights)


def test_first_step_is_the_model_and_counts_arrive_one_step_later():
    """No counts at step 0: the tables pass unchanged.  A token coded at step
    s is counted for every stream from step s + 1 on, never at step s."""
    group = NGramGroup(2, 8)
    t = flat(2, 8)
    assert (group.mix(t.copy(), [0, 1]) == t).all()
    group.learn([0, 1], t, [5, 6])
    m = group.mix(t.copy(), [0, 1])
    assert m[0, 5] > t[0, 5] and m[0, 6] > t[0, 6] and m[1, 5] > t[1, 5]
    assert m[0, 3] < t[0, 3]


def test_caches_learn_a_small_vocabulary_and_repeated_phrases():
    """A model that knows nothing; text of few words repeated: the caches take
    the weight and code it far below the model."""
    rng = random.Random(4)
    words = [[rng.randrange(2048) for _ in range(3)] for _ in range(20)]
    seq = [t for _ in range(600) for t in rng.choice(words)]
    group = NGramGroup(2, 2048)
    model, mixed = run(group, [seq[:900], seq[900:]], lambda ids, syms: flat(len(ids), 2048))
    assert mixed < 0.35 * model
    assert all(w.sum() > ONE // 2 for w in group.weights)


def test_a_model_that_knows_the_data_keeps_its_weight():
    """Tables that give the coded token most of the mass: the weights of the
    caches that had counts fall to the floor (the longer contexts of random
    tokens hardly ever recur, and a cache without counts weighs nothing) and
    the mixing costs almost nothing."""
    rng = random.Random(5)
    seq = [rng.randrange(2048) for _ in range(3000)]

    def sure(ids, syms):
        t = np.zeros((len(ids), 2048), dtype=np.int64)
        t[np.arange(len(ids)), syms] = TOTAL - 2048 - 2047 * 64
        t += 64 * (t == 0)
        return t
    group = NGramGroup(1, 2048)
    model, mixed = run(group, [seq], sure)
    assert mixed < model + 0.02 * len(seq)
    assert group.weights[0][:2].tolist() == [FLOOR, FLOOR]


def test_real_inference_gains_on_a_block_of_its_own_words(model):
    """Real inference: on text whose words recur beyond what the window keeps
    (a shuffled vocabulary, no long repeats for the match model), the n-gram
    caches code below the match model alone, and the block decodes back."""
    codec = LLMCodec(model)
    rng = random.Random(6)
    words = PROSE.split()[:60]
    block = b" ".join(rng.choice(words) for _ in range(1500))
    assert codec.cost_bits(block, version=NGRAMS) < 0.8 * codec.cost_bits(block, version=MATCH)
    enc = codec.encode(block)
    assert enc.version == NGRAMS
    assert model.tokenizer.decode(codec.decode_many([enc])[0]) == block


def test_encoder_gives_up_only_when_the_first_window_is_worse(model):
    """``abort_bpb``: a multi-stream block whose payload beats the bound by a
    little is coded (the test waits until every stream is a window in, since
    each stream's cold start costs more), and one far above it is not."""
    from pathlib import Path

    codec = LLMCodec(model)
    block = (Path(__file__).parent.parent / "llmfs" / "samples" / "GPL-3.txt").read_bytes()
    full = codec.encode(block)
    assert len(split_segments(full.payload, full.n_tokens)) >= 4
    bpb = 8 * len(full.payload) / len(block)
    assert codec.encode(block, abort_bpb=1.1 * bpb) == full
    assert codec.encode(block, abort_bpb=0.5 * bpb) is None
