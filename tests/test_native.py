"""The native exact core gives the torch engine's integers bit for bit."""
from __future__ import annotations

import pytest
import torch

from llmfs.codec.llm import LLMCodec
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
    return torch.cat([eng.step(tokens[:, i:i + chunk], cache)
                      for i in range(0, tokens.shape[1], chunk)], 1)


def test_tables_equal_the_torch_engine_past_the_window(lm):
    g = torch.Generator().manual_seed(7)
    T = lm.cfg.window + 90                        # the ring buffer wraps
    tokens = torch.randint(0, lm.cfg.vocab, (3, T), generator=g)
    want = tables(lm.engine, tokens, 64)
    eng = native.NativeEngine(lm.engine)
    for chunk in (1, 37, T):
        assert torch.equal(native_tables(eng, tokens, chunk), want), chunk
    assert torch.equal(eng.freqs(want), lm.engine.freqs(want))


def test_adversarial_tokens_and_logits(model):
    """Runs of one token drive activations to the clamps; flat and extreme
    logits exercise the frequency tables' edges."""
    eng = native.NativeEngine(model.engine)
    for tok in (0, model.cfg.vocab - 1, int(model.tokenizer.encode(b" ")[0])):
        tokens = torch.full((2, 300), tok)
        assert torch.equal(native_tables(eng, tokens, 300), tables(model.engine, tokens, 300))
    V = model.cfg.vocab
    logits = torch.stack([torch.zeros(V, dtype=torch.int64),
                          torch.arange(V, dtype=torch.int64) * -1000,
                          torch.full((V,), -(1 << 40), dtype=torch.int64)])
    assert torch.equal(eng.freqs(logits), model.engine.freqs(logits))


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
    eng = native.NativeEngine(model.engine)
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
    eng = native.NativeEngine(model.engine)
    cache = eng.new_cache()
    for bad in (torch.tensor([[model.cfg.vocab]]), torch.tensor([[-1]])):
        with pytest.raises(ValueError, match="token id out of range"):
            eng.step(bad, cache)
    with pytest.raises(ValueError):
        cache.core.step(b"\0" * 8, 2, bytearray(16))       # sizes that do not match


def test_select_keeps_the_right_streams(model):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, model.cfg.vocab, (4, 40), generator=g)
    eng = native.NativeEngine(model.engine)
    cache, ref = eng.new_cache(), model.engine.new_cache()
    eng.step(tokens[:, :20], cache)
    model.engine.step(tokens[:, :20], ref)
    rows = torch.tensor([0, 2, 3])
    cache.select(rows)
    ref.select(rows)
    assert torch.equal(eng.step(tokens[rows, 20:], cache),
                       model.engine.step(tokens[rows, 20:], ref))


def test_codec_payloads_are_the_torch_engines(model, monkeypatch):
    data = PROSE * 3
    codec = LLMCodec(model)
    assert isinstance(codec.engine, native.NativeEngine)
    enc = codec.encode(data)
    monkeypatch.setenv("LLMFS_ENGINE", "torch")
    ref = LLMCodec(model)
    assert ref.engine is model.engine
    assert ref.encode(data).payload == enc.payload
    assert model.tokenizer.decode(ref.decode_many([enc])[0]) == data
    monkeypatch.setenv("LLMFS_ENGINE", "native")
    assert model.tokenizer.decode(LLMCodec(model).decode_many([enc])[0]) == data


def test_a_bad_setting_is_named():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMFS_ENGINE", "fast")
        with pytest.raises(ValueError, match="LLMFS_ENGINE='fast'"):
            native.wanted()
