"""The native exact core gives the torch engine's integers bit for bit."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import constriction
import numpy as np
import pytest
import torch

from llmfs.codec import llm
from llmfs.codec.frame import MATCH, MODEL_ALONE, NGRAMS
from llmfs.codec.llm import LLMCodec, three_buckets
from llmfs.codec.mixer import Mixer, symbol_stats
from llmfs.codec.segments import split_segments
from llmfs.model import MODELS_DIR, native
from llmfs.model.modelfile import LanguageModel

from conftest import PROSE, tables

pytestmark = pytest.mark.skipif(not native.available(), reason="native core not built")

SHIPPED = ["default", "technical", "starter"]


@pytest.fixture(scope="module", params=SHIPPED)
def lm(request, model) -> LanguageModel:
    if request.param == "default":
        return model
    return LanguageModel.load(MODELS_DIR / request.param / "model.safetensors")


def native_tables(eng, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    cache = eng.new_cache()
    return torch.cat([torch.from_numpy(eng.step(tokens[:, i:i + chunk].numpy(), cache))
                      for i in range(0, tokens.shape[1], chunk)], 1)


def test_tables_equal_the_torch_engine_past_the_window(lm):
    g = torch.Generator().manual_seed(7)
    T = lm.cfg.window + 90                        # the ring buffer wraps
    tokens = torch.randint(0, lm.cfg.vocab, (3, T), generator=g)
    want = tables(lm.engine, tokens, 64)
    eng = native.NativeEngine.of(lm)
    for chunk in (1, 37, T):
        assert torch.equal(native_tables(eng, tokens, chunk), want), chunk
    assert torch.equal(torch.from_numpy(eng.freqs(want.numpy())), lm.engine.freqs(want))


def test_adversarial_tokens_and_logits(model):
    """Runs of one token drive activations to the clamps; flat and extreme
    logits exercise the frequency tables' edges."""
    eng = native.NativeEngine.of(model)
    for tok in (0, model.cfg.vocab - 1, int(model.tokenizer.encode(b" ")[0])):
        tokens = torch.full((2, 300), tok)
        assert torch.equal(native_tables(eng, tokens, 300), tables(model.engine, tokens, 300))
    V = model.cfg.vocab
    logits = torch.stack([torch.zeros(V, dtype=torch.int64),
                          torch.arange(V, dtype=torch.int64) * -1000,
                          torch.full((V,), -(1 << 40), dtype=torch.int64)])
    assert torch.equal(torch.from_numpy(eng.freqs(logits.numpy())), model.engine.freqs(logits))


def test_every_simd_path_gives_the_portable_integers(model):
    """Every matmul path the CPU has (AVX-512 VNNI, AVX2) and the portable C
    give the torch engine's tables, on random tokens and on runs that drive
    activations to the int8 clamps."""
    from llmfs.model import _core

    fast = _core.simd()
    paths = _core.simd_paths()
    assert paths[0] == fast and paths[-1] == "portable"
    g = torch.Generator().manual_seed(11)
    cases = [torch.randint(0, model.cfg.vocab, (3, 280), generator=g),
             torch.full((2, 280), model.cfg.vocab - 1)]
    want = [tables(model.engine, t, 280) for t in cases]
    eng = native.NativeEngine.of(model)
    try:
        for path in paths:
            assert _core.simd(path) == path
            for t, tab in zip(cases, want):
                assert torch.equal(native_tables(eng, t, 280), tab), path
    finally:
        _core.simd(fast)
    with pytest.raises(ValueError, match="not available"):
        _core.simd("neon")


def test_bad_input_is_an_error_not_a_crash(model):
    eng = native.NativeEngine.of(model)
    cache = eng.new_cache()
    for bad in (np.array([[model.cfg.vocab]]), np.array([[-1]])):
        with pytest.raises(ValueError, match="token id out of range"):
            eng.step(bad, cache)
    with pytest.raises(ValueError):
        cache.core.step(b"\0" * 8, 2, bytearray(16))       # sizes that do not match


def test_select_keeps_the_right_streams(model):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, model.cfg.vocab, (4, 40), generator=g)
    eng = native.NativeEngine.of(model)
    cache, ref = eng.new_cache(), model.engine.new_cache()
    eng.step(tokens[:, :20].numpy(), cache)
    model.engine.step(tokens[:, :20], ref)
    rows = [0, 2, 3]
    cache.select(rows)
    ref.select(rows)
    assert torch.equal(torch.from_numpy(eng.step(tokens[rows, 20:].numpy(), cache)),
                       model.engine.step(tokens[rows, 20:], ref))


def test_codec_payloads_are_the_python_references(model, monkeypatch):
    """The core end to end (model, mixer, range decoder) against the torch
    engine with the Python mixers and constriction's decoder: same payloads
    both ways, each decodes the other's."""
    data = PROSE * 3 + bytes(range(256)) + PROSE[::-1]
    codec = LLMCodec(model)
    assert isinstance(codec.engine, native.NativeEngine)
    enc = codec.encode(data)
    assert enc.version == NGRAMS
    monkeypatch.setenv("LLMFS_ENGINE", "torch")
    monkeypatch.setattr(llm, "new_mixer", Mixer)
    ref = LLMCodec(model)
    assert ref.engine is model.engine
    assert ref.encode(data).payload == enc.payload
    assert model.tokenizer.decode(ref.decode_many([enc])[0]) == data
    monkeypatch.setenv("LLMFS_ENGINE", "native")
    assert model.tokenizer.decode(LLMCodec(model).decode_many([enc])[0]) == data


@pytest.mark.parametrize("version", [MODEL_ALONE, MATCH, NGRAMS])
def test_mixer_tables_equal_the_python_mixers(model, version):
    """The core's mixer against codec/mixer.py step by step, on the model's
    own tables of repetitive text in five streams of unequal length (matches
    across streams, n-gram contexts growing dense, streams ending)."""
    ids = model.tokenizer.encode(PROSE * 4)
    cut = [0, 150, 300, 450, 600, 680]
    parts = [ids[a:b] for a, b in zip(cut, cut[1:])]
    B, V = len(parts), model.cfg.vocab
    toks = np.zeros((B, 150), dtype=np.int64)
    for i, p in enumerate(parts):
        toks[i, :len(p)] = p
    freqs = model.engine.freqs(tables(model.engine, torch.from_numpy(toks), 150)).numpy()
    ours, ref = native.mixer(B, version, V), Mixer(B, version, V)
    for s in range(150):
        act = [i for i in range(B) if s < len(parts[i])]
        want = ref.tables(freqs[act, s].copy(), act)
        assert np.array_equal(ours.tables(freqs[act, s].copy(), act), want), s
        syms = [int(parts[i][s]) for i in act]
        ref.learn(act, syms)
        ours.learn(act, syms)
    lens = np.array([len(p) for p in parts])
    got = [np.zeros((B, 150, 3), dtype=np.int64) for _ in range(4)]
    native.mixer(B, version, V).run(freqs, toks, lens, 0, got[0], got[1])
    Mixer(B, version, V).run(freqs, toks, lens, 0, got[2], got[3])
    assert np.array_equal(got[0], got[2]) and np.array_equal(got[1], got[3])


def test_mixer_rejects_bad_input(model):
    V = model.cfg.vocab
    with pytest.raises(ValueError, match="unknown llm payload version"):
        native.mixer(2, 5, V)
    mx = native.mixer(2, NGRAMS, V)
    with pytest.raises(ValueError, match="ascending"):
        mx.tables(np.zeros((2, V), dtype=np.int64), [1, 0])
    with pytest.raises(ValueError, match="int64"):
        mx.tables(np.zeros((1, V), dtype=np.int64), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        mx.learn([0], [V])


def test_range_decoder_reads_constrictions_streams():
    """Flat, peaked and all-on-one-token tables; first, last and random
    symbols, coded by constriction as the encoder codes them (three buckets)."""
    from llmfs.model import _core

    V, rng = 2048, np.random.default_rng(3)
    for trial in range(12):
        n = int(rng.integers(1, 300))
        f = rng.integers(0, 5000, size=(n, V)) * (trial % 3 != 0)
        f[np.arange(n), rng.integers(0, V, n)] += rng.integers(0, 1 << 23, n)
        f[:, 0] += (1 << 24) - V - f.sum(1)
        syms = rng.integers(0, V, n)
        syms[: n // 4] = (V - 1, 0)[trial % 2]
        coder = constriction.stream.queue.RangeEncoder()
        coder.encode(*three_buckets(symbol_stats(f, syms), V))
        words = coder.get_compressed().tobytes()
        assert _core.range_decode(words, f.astype(np.int64).tobytes(), V) == syms.tolist()


def test_fuzzed_payloads_are_errors_or_caught(model):
    """Damaged streams through the core's decoder: flipped bits, cut and
    random words, wrong token counts -- each stream decodes to tokens (the
    frame checksum then catches wrong bytes) or None, never a crash; the
    undamaged streams of the batch decode right."""
    codec = LLMCodec(model)
    enc = codec.encode(PROSE * 2)
    streams = split_segments(enc.payload, enc.n_tokens)
    rng = np.random.default_rng(5)
    for trial in range(40):
        words, n = streams[trial % len(streams)]
        bad = bytearray(words)
        kind = trial % 4
        if kind == 0:
            for _ in range(1 + trial % 7):
                bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            bad = bad[: int(rng.integers(0, len(bad)))]
        elif kind == 2:
            bad = bytearray(rng.bytes(4 * int(rng.integers(0, 50))))
        else:
            n = int(rng.integers(0, 3 * n))
        batch = [(bytes(bad), n)] + list(streams)
        got = codec.engine.decode(codec.bos, batch, [(0, 1, NGRAMS), (1, len(streams), NGRAMS)])
        assert got[0] is None or (len(got[0]) == n and all(0 <= t < model.cfg.vocab
                                                             for t in got[0]))
        assert model.tokenizer.decode([t for s in got[1:] for t in s]) == PROSE * 2


@pytest.fixture
def threads():
    """Sets the core's thread count for a test, and 1 again after it."""
    yield native.threads
    native.threads(1)


def test_threads_give_the_same_tables(model, threads):
    """A step's streams split over helper threads: the tables of every
    chunking equal the one-thread ones, with more threads than streams too."""
    g = torch.Generator().manual_seed(17)
    tokens = torch.randint(0, model.cfg.vocab, (7, model.cfg.window + 40), generator=g)
    eng = native.NativeEngine.of(model)
    want = native_tables(eng, tokens, 64)
    for n in (2, 3, 16):
        assert threads(n) == n
        for chunk in (1, 64):
            assert torch.equal(native_tables(eng, tokens, chunk), want), (n, chunk)


def test_threads_decode_the_same_tokens(model, threads):
    """A batch of mixed blocks of unequal length and a damaged copy of one
    stream decoded with the model alone, on 1, 2 and 5 threads: the same
    tokens (the streams end at different steps, so the chunks shrink)."""
    codec = LLMCodec(model)
    blocks = [PROSE * 2, PROSE[:700], bytes(range(256)) * 3]
    coded = [codec.encode(b) for b in blocks]
    streams, groups, spans = [], [], []
    for c in coded:
        segs = split_segments(c.payload, c.n_tokens)
        spans.append((len(streams), len(segs)))
        if c.version != MODEL_ALONE:
            groups.append((len(streams), len(segs), c.version))
        streams += segs
    bad = bytearray(streams[0][0])
    bad[len(bad) // 2] ^= 0x10
    streams.append((bytes(bad), streams[0][1]))      # model alone, damaged
    want = codec.engine.decode(codec.bos, streams, groups)
    assert [model.tokenizer.decode([t for s in want[a:a + k] for t in s])
            for a, k in spans] == blocks
    assert groups                # mixed blocks (the damaged stream runs the model alone)
    for n in (2, 5):
        threads(n)
        assert codec.engine.decode(codec.bos, streams, groups) == want, n
        assert model.tokenizer.decode(codec.decode_many(coded[:1])[0]) == blocks[0]


def test_threads_survive_fork(model, threads):
    """A process forked while the core has helper threads has none of them:
    its first step starts its own and decodes right (no hang)."""
    codec = LLMCodec(model)
    coded = codec.encode(PROSE)
    threads(2)
    assert model.tokenizer.decode(codec.decode_many([coded])[0]) == PROSE
    pid = os.fork()
    if pid == 0:     # the child: exit status says whether it decoded
        ok = model.tokenizer.decode(codec.decode_many([coded])[0]) == PROSE
        os._exit(0 if ok else 1)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung decoding")
    assert os.waitstatus_to_exitcode(status) == 0


def test_decoding_with_the_core_never_imports_torch(tmp_path):
    """A worker (and `llmfs decompress`) decoding with the core loads the
    model and codes without torch: seconds off a cold first byte."""
    code = ("import math, multiprocessing, sys\n"
            "from llmfs.codec import workers\n"
            "from llmfs.model.modelfile import LanguageModel\n"
            "m = LanguageModel.load()\n"
            "workers._init(m.data, multiprocessing.Value('i', 0))\n"
            f"data = {PROSE!r}\n"
            "coded = workers._encode((data, math.inf))\n"
            "assert m.tokenizer.decode(workers._decode([coded])[0]) == data\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_bad_setting_is_named():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMFS_ENGINE", "fast")
        with pytest.raises(ValueError, match="LLMFS_ENGINE='fast'"):
            native.wanted()
