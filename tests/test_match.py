"""The match model: integer mixing, match finding, and its gain on real inference."""
import random

import numpy as np
from hypothesis import given, settings, strategies as st

from conftest import PROSE
from llmfs.codec.frame import MATCH, MODEL_ALONE, VERSION
from llmfs.codec.llm import LLMCodec
from llmfs.codec.match import TOTAL, Confidence, MatchGroup, mix
from llmfs.codec.segments import Coded, split_segments


def match_plan(streams: list[list[int]]) -> list[list[tuple[int, int] | None]]:
    """Every stream's predictions at every position, driving a MatchGroup in
    lockstep with known tokens as the codec does."""
    group = MatchGroup(len(streams))
    plan: list[list[tuple[int, int] | None]] = [[] for _ in streams]
    for s in range(max(map(len, streams))):
        for i, pred in enumerate(group.predictions()):
            if s < len(streams[i]):
                plan[i].append(pred)
                group.append(i, streams[i][s])
    return plan


@settings(max_examples=300)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 5, 2048]), st.integers(1, TOTAL),
       st.sampled_from(["random", "all_on_pred", "none_on_pred"]))
def test_mix_gives_the_prediction_its_probability_and_keeps_the_total(seed, vocab, p, shape):
    rng = np.random.default_rng(seed)
    total = TOTAL - vocab
    sym = int(rng.integers(vocab))
    f = rng.integers(0, 1000, vocab).astype(np.int64)
    if shape == "all_on_pred":
        f[:] = 0
        f[(sym + 1) % vocab] = 1     # everything else gets next to nothing
    elif shape == "none_on_pred":
        f[sym] = 0
    f = np.floor(f * (total / max(1, f.sum()))).astype(np.int64)
    f[int(f.argmax())] += total - f.sum()
    table = np.stack([f, f])
    mix(table, [1], [sym], [p])
    assert (table[0] == f).all()                       # rows not named stay as they were
    got = table[1]
    assert got.sum() == total and (got >= 0).all()
    if f[sym] == total:                                # nothing to take from the others
        assert (got == f).all()
        return
    want = min(p, total)
    assert want - 1 <= got[sym] <= want - 1 + vocab    # the coder adds 1: p, up to rounding
    others = np.delete(np.arange(vocab), sym)          # ... and the others keep their shares
    err = got[others] - f[others] * ((total + 1 - want) / (total - f[sym]))
    assert (err > -2).all() and (err < 1e-6).all()


def test_mix_leaves_a_table_that_is_all_prediction():
    table = np.zeros((1, 4), dtype=np.int64)
    table[0, 2] = TOTAL - 4
    mix(table, [0], [2], [TOTAL // 2])
    assert table[0].tolist() == [0, 0, TOTAL - 4, 0]


def test_a_repeat_is_predicted_and_trusted_more_with_every_hit():
    seq = random.Random(1).choices(range(500), k=300)
    (plan,) = match_plan([seq + seq])
    assert all(plan[k] == (seq[k - 300], plan[k][1]) for k in range(310, 600))
    assert [plan[k][1] for k in range(310, 600)] == list(range(plan[310][1], plan[310][1] + 290))
    conf, probs = Confidence(), []
    for k in range(310, 600):
        probs.append(conf.prob(plan[k][1], 1000))
        conf.learn(True)
    assert probs[-1] > 0.9 * TOTAL > probs[0]


def test_a_miss_finds_the_longest_earlier_context():
    (plan,) = match_plan([[1, 2, 3, 9, 7, 2, 3, 5, 0, 1, 2, 3, 4]])
    assert plan[-1] == (9, 3)         # after "1 2 3": what followed "1 2 3", not "2 3" -> 5


def test_streams_match_each_other_in_lockstep_only():
    """At step s a stream sees the first s tokens of every stream of its block:
    a stream that repeats another one later is predicted from it, one that
    repeats it earlier cannot be (those tokens are decoded at the same time)."""
    a = random.Random(2).sample(range(1000, 2000), 50)          # no token twice
    later, earlier = [7] * 5 + a, a[5:]
    plan = match_plan([a, later, earlier])
    assert [p[0] for p in plan[1][6:]] == later[6:]          # from the 2nd token of a on
    assert [p[0] for p in plan[1][2:6]] == [7] * 4           # its own run of 7s
    assert plan[2] == [None] * len(earlier)


def test_block_with_a_repeat_beyond_the_window_costs_far_less(model):
    """Real inference: a 2nd copy of prose further back than the model's window
    is nearly free with the match model, and decodes back."""
    codec = LLMCodec(model)
    block = PROSE + PROSE[::-1] + PROSE        # the repeat starts > 256 tokens back
    ids = model.tokenizer.encode(block)
    assert len(model.tokenizer.encode(PROSE + PROSE[::-1])) > model.cfg.window
    assert (codec.cost_bits(block, version=MATCH)
            < 0.85 * codec.cost_bits(block, version=MODEL_ALONE))
    enc = codec.encode(block)
    assert enc.version == VERSION
    assert model.tokenizer.decode(codec.decode_many([enc])[0]) == block
    # the same payload read as a model-alone payload does not give the block back
    assert codec.decode_many([Coded(enc.payload, enc.n_tokens, MODEL_ALONE)])[0] != list(ids)


def spoil_mixing(monkeypatch) -> None:
    """Make every mixed table flat (the model-alone coding then wins); the
    encoder then runs the Python mixer, patched."""
    from llmfs.codec import llm
    from llmfs.codec.mixer import Mixer

    def flat(self, freqs, ids):
        total = TOTAL - freqs.shape[1]
        out = np.full_like(freqs, total // freqs.shape[1])
        out[:, 0] += total - out.sum(1)
        return out
    monkeypatch.setattr(Mixer, "tables", flat)
    monkeypatch.setattr(Mixer, "learn", lambda self, ids, syms: None)
    monkeypatch.setattr(llm, "new_mixer", Mixer)


def test_encoder_keeps_the_model_alone_where_mixing_loses(model, monkeypatch):
    """Where the mixing loses (here: mixed tables made flat), the encoder keeps
    the model-alone coding and says so."""
    from llmfs.codec.policy import BlockCodec
    from llmfs.codec.frame import Frame

    codec = LLMCodec(model)
    block = PROSE
    fair = codec.encode(block)
    spoil_mixing(monkeypatch)
    enc = codec.encode(block)
    assert enc.version == MODEL_ALONE and len(enc.payload) <= len(fair.payload) + 64
    assert codec.cost_bits(block) > codec.cost_bits(block, version=MODEL_ALONE)
    assert model.tokenizer.decode(codec.decode_many([enc])[0]) == block
    frame = Frame.unpack(BlockCodec(model).encode_blocks([block])[0])
    assert frame.version == MODEL_ALONE                  # what the policy writes for it


def test_pool_decodes_both_versions_of_a_long_block(model, monkeypatch):
    """Through the worker pool: a mixed block's streams stay together
    (shared history), a model-alone block's are spread one by one."""
    from llmfs.codec.workers import LLMPool

    rng = random.Random(3)                               # several streams, few true repeats
    block = bytes(rng.choice(b"abcdefghij klmnop") for _ in range(12000))
    codec = LLMCodec(model)
    mixed = codec.encode(block)
    spoil_mixing(monkeypatch)
    alone = codec.encode(block)
    assert mixed.version == VERSION and alone.version == MODEL_ALONE
    assert len(split_segments(alone.payload, alone.n_tokens)) > 2
    pool = LLMPool(model, 2)
    try:
        got = pool.decode_many([mixed, alone, alone._replace(payload=alone.payload[:-4])])
    finally:
        pool.close()
    assert [model.tokenizer.decode(t) for t in got[:2]] == [block, block]
    assert got[2] is None                                # damaged: rejected, the others decode
