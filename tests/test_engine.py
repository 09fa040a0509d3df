"""The engine's frequency tables must be bit-identical however they are computed."""
import hashlib
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load

from conftest import TEXT, tables, torch_threads
from llmfs.model.engine import FREQ_BITS, Engine, exact_mm, int8_mm_exact, int8_mm_pays, isqrt


@pytest.fixture(scope="module")
def tokens(model):
    # longer than the window, so the sliding window and cache eviction are exercised
    ids = model.tokenizer.encode(TEXT * 12)
    n = model.cfg.window + 150
    assert len(ids) >= n
    return torch.from_numpy(ids[:n])[None]


def test_full_equals_incremental_and_any_chunking(model, tokens):
    e = model.engine
    full = tables(e, tokens, tokens.shape[1])
    assert torch.equal(full, tables(e, tokens, 1))
    assert torch.equal(full, tables(e, tokens, 37))
    assert torch.equal(full, tables(e, tokens, model.cfg.window))


def test_batch_and_thread_invariance(model, tokens):
    e = model.engine
    other = torch.flip(tokens, [1])
    batch = torch.cat([tokens, other, tokens[:, torch.randperm(tokens.shape[1])]])
    with torch_threads(2):
        b = tables(e, batch, 1)
    with torch_threads(1):
        single = tables(e, tokens, 64)
        single_other = tables(e, other, 1)
    assert torch.equal(b[0:1], single)
    assert torch.equal(b[1:2], single_other)


def test_freqs_sum_exactly(model, tokens):
    e = model.engine
    f = e.freqs(tables(e, tokens, 64)[0])
    assert (f.sum(-1) == (1 << FREQ_BITS) - model.cfg.vocab).all()
    assert (f >= 0).all()


def test_model_predicts_text(model, tokens):
    """A trained model: the table puts real mass on the true next token."""
    e = model.engine
    f = e.freqs(tables(e, tokens, 64)[0]).double() + 1
    p = f[:-1].gather(1, tokens[0, 1:, None]).squeeze(1) / (1 << FREQ_BITS)
    bits = -torch.log2(p).mean().item()
    assert bits < 6.0, bits  # uniform would be log2(vocab) = 11 bits


def test_isqrt_exact():
    """Around perfect squares up to 2**52, where the float root rounds up."""
    rng = random.Random(5)
    ks = [rng.randrange(1, 1 << 26) for _ in range(20000)] + [(1 << 26) - 1, 1, 2, 3]
    ns = [n for k in ks for n in (k * k - 1, k * k, k * k + 1)] + [0, (1 << 52) - 1]
    ns += [rng.randrange(1 << 52) for _ in range(20000)]
    assert isqrt(torch.tensor(ns)).tolist() == [math.isqrt(n) for n in ns]


def test_integer_and_float_matmuls_agree(model, tokens):
    """The int8 matmul path (where the probe finds it exact, fast or not) and
    the float32 path, over long (banded attention) and single-token steps."""
    if not int8_mm_exact():
        pytest.skip("torch._int_mm is not exact on this CPU; the float path is used")
    fast = Engine(model.cfg, load(model.data), int8=True)
    plain = Engine(model.cfg, load(model.data), int8=False)
    assert fast.int8 and not plain.int8
    assert torch.equal(tables(fast, tokens, 256), tables(plain, tokens, 256))
    assert torch.equal(tables(fast, tokens[:, :80], 1), tables(plain, tokens[:, :80], 1))


def test_engine_takes_int8_matmuls_only_where_they_are_exact_and_faster(model):
    """Where torch._int_mm is exact but slower than float32 (AVX2 without
    VNNI: 35-50x), the engine runs the float32 path; the choice is the probes'."""
    assert int8_mm_pays() <= int8_mm_exact()
    assert model.engine.int8 == int8_mm_pays()
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (64, 128), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (128, 512), dtype=torch.int8, generator=g)
    if int8_mm_exact():          # the probe compared the same kind of product
        assert torch.equal(torch._int_mm(a, w).to(torch.int64), exact_mm(a.float(), w.float()))


_CHILD = """
import hashlib, sys, torch
sys.path.insert(0, "tests")
from conftest import tables
from llmfs.model.engine import int8_mm_exact
from llmfs.model.modelfile import LanguageModel
m = LanguageModel.load()
ids = torch.tensor([int(t) for t in sys.argv[1].split(",")])[None]
ones = torch.full((64, 128), 127, dtype=torch.int8)
saturates = not bool((torch._int_mm(ones, ones.T.contiguous()) == 127 * 127 * 128).all())
print(saturates, int8_mm_exact(), m.engine.int8,
      hashlib.sha256(tables(m.engine, ids, 128).numpy().tobytes()).hexdigest())
"""


def test_saturating_int8_kernel_is_detected(model, tokens):
    """oneDNN without VNNI (forced with ONEDNN_MAX_CPU_ISA=AVX2) saturates 16-bit
    partial sums in torch._int_mm on CPUs that have VNNI; the probe must refuse
    it there.  (On an AVX2 CPU without VNNI the kernel seen here was exact but
    slow, and the engine takes the float32 path for speed.)  Either way the
    engine's tables must be the same as here."""
    ids = tokens[:, :300]
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", _CHILD, ",".join(map(str, ids[0].tolist()))],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    saturates, exact, engine_int8 = (v == "True" for v in out[:3])
    if saturates:
        assert not exact and not engine_int8
    assert engine_int8 <= exact
    assert out[3] == hashlib.sha256(tables(model.engine, ids, 128).numpy().tobytes()).hexdigest()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tables_equal_cpu(model, tokens):
    from llmfs.model.modelfile import DEFAULT_MODEL, LanguageModel

    gpu = LanguageModel.load(DEFAULT_MODEL, "cuda")
    cpu_t = tables(model.engine, tokens, 1)
    gpu_t = tables(gpu.engine, tokens, 64).cpu()
    assert torch.equal(cpu_t, gpu_t)


def test_requant_wide_matches_big_integer_rounding():
    """The strong tier's wide requantisation: exact against Python integers,
    at the extremes of its range, where plain int64 products would overflow."""
    import random

    from llmfs.model.engine import SHIFT, requant_wide

    rng = random.Random(3)
    acc = [rng.randrange(-(1 << 53) + 1, 1 << 53) for _ in range(500)] + [(1 << 53) - 1,
                                                                             -(1 << 53) + 1, 0]
    mult = [rng.randrange(1, 1 << 33) for _ in acc]
    got = requant_wide(torch.tensor(acc), torch.tensor(mult), 20).tolist()
    for a, m, g in zip(acc, mult, got):
        exact = a * m / 2 ** (SHIFT + 20)
        assert abs(g - exact) <= 1, (a, m, g, exact)


def test_a_missing_native_core_is_named_in_one_line(model, monkeypatch, caplog):
    """Without the C core the codec runs the torch engine and says why;
    LLMFS_ENGINE=native makes that an error naming what to install."""
    from llmfs.codec.llm import LLMCodec
    from llmfs.model import native

    monkeypatch.setattr(native, "_core", None)
    monkeypatch.setattr(native, "_why", "No module named 'llmfs.model._core'", raising=False)
    assert LLMCodec(model).engine is model.engine
    assert "native core not built" in caplog.text and "gcc" in caplog.text
    monkeypatch.setenv("LLMFS_ENGINE", "native")
    with pytest.raises(RuntimeError, match="apt install gcc"):
        LLMCodec(model)
