"""The native exact core (``_core.c``) behind the torch engine's interface.

``NativeEngine`` takes a built :class:`~llmfs.model.engine.Engine` (its
tensors are the single source of the model's integers), copies them into the
core's layout once, and answers ``step`` / ``freqs`` / ``new_cache`` with the
same integers, position by position in C.  Only ALiBi models run here (the
shipped default, technical and starter); the strong tier (rotary Llama) stays
on the torch engine.

``LLMFS_ENGINE=torch`` forces the torch engine (for comparison);
``LLMFS_ENGINE=native`` makes a missing core an error instead of a fallback.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .engine import FX, NORM_R, Engine

log = logging.getLogger(__name__)

try:
    from . import _core
except ImportError as e:     # not built: say once what to do, run the torch engine
    _core = None
    _why = str(e)


def wanted() -> str:
    """The engine asked for: "auto" (default), "native" or "torch"."""
    choice = os.environ.get("LLMFS_ENGINE", "auto")
    if choice not in ("auto", "native", "torch"):
        raise ValueError(f"LLMFS_ENGINE={choice!r}: expected auto, native or torch")
    return choice


def available() -> bool:
    return _core is not None


def simd(path: str | None = None) -> str:
    """The SIMD path the core runs ("avx2" or "portable"); *path* switches
    to another (every path gives the same integers)."""
    if _core is None:
        return "none"
    return _core.simd(path) if path else _core.simd()


def choose(engine: Engine) -> Engine | NativeEngine:
    """The engine to run *engine*'s model with, as LLMFS_ENGINE says."""
    choice = wanted()
    if choice == "torch" or engine.llama or engine.device.type != "cpu":
        return engine
    if _core is None:
        if choice == "native":
            raise RuntimeError(f"the native core is not built ({_why}); reinstall llmfs "
                               "with a C compiler (apt install gcc python3-dev)")
        log.warning("native core not built (%s): running the slower torch engine; "
                    "reinstall llmfs with gcc and python3-dev to build it", _why)
        return engine
    return NativeEngine(engine)


def mixer(n_streams: int, version: int, vocab: int):
    """The core's mixer of one block's streams (``codec/mixer.py``'s interface)."""
    return _core.Mixer(n_streams, version, vocab)


def _i8(w: torch.Tensor) -> bytes:
    """An engine weight ([K, N], int8-valued) as int8 rows [N, K]."""
    return w.T.contiguous().to(torch.int8).numpy().tobytes()


def _i64(t: torch.Tensor) -> bytes:
    return t.to(torch.int64).contiguous().numpy().tobytes()


class NativeCache:
    """The key/value cache of a batch; made on the first step."""

    def __init__(self) -> None:
        self.core = None

    @property
    def fill(self) -> int:
        return self.core.fill if self.core is not None else 0

    def select(self, rows: torch.Tensor) -> None:
        self.core.select([int(r) for r in rows])


class NativeEngine:
    """``Engine.step`` / ``freqs`` on the native core; the same tables."""

    def __init__(self, engine: Engine) -> None:
        cfg = engine.cfg
        self.cfg = cfg
        self.device = engine.device
        if engine.exp_split:
            exp_attn = (engine.exp_attn.to(torch.int64) << 8) + engine.exp_attn_lo.to(torch.int64)
        else:
            exp_attn = engine.exp_attn.to(torch.int64)
        bufs = [_i64(engine.emb), _i8(engine.head), _i64(engine.head_m), _i64(engine.norm_f),
                _i64(engine.exp_vocab), _i64(exp_attn),
                engine.alibi.to(torch.int32).contiguous().numpy().tobytes()]
        for lw in engine.layers:
            shift = (torch.log2(lw.score_half.flatten()).round() + 1).to(torch.int32)
            bufs += [_i8(lw.wqkv), _i64(lw.qkv_m), _i8(lw.wo), _i64(lw.wo_m), _i8(lw.w1),
                     _i64(lw.w1_m), _i8(lw.w2), _i64(lw.w2_m),
                     lw.gelu.to(torch.int8).contiguous().numpy().tobytes(),
                     _i64(lw.norm1), _i64(lw.norm2), shift.numpy().tobytes()]
        eps = int(cfg.norm_eps * (1 << (2 * (FX + NORM_R))))
        dims = (cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab,
                cfg.n_layer, cfg.window, engine.layers[0].gelu_n, exp_attn.numel(),
                engine.exp_vocab.numel(), eps, engine.total)
        self.core = _core.Model(dims, bufs)

    def new_cache(self) -> NativeCache:
        return NativeCache()

    def step(self, tokens: torch.Tensor, cache: NativeCache) -> torch.Tensor:
        """Advance a batch by ``n`` tokens; int64 logits [B, n, V] (1/ZV nat)."""
        B, n = tokens.shape
        if cache.core is None:
            cache.core = _core.Cache(self.core, B)
        out = np.empty((B, n, self.cfg.vocab), dtype=np.int64)
        cache.core.step(tokens.to(torch.int64).contiguous().numpy().tobytes(), n, out)
        return torch.from_numpy(out)

    def decode(self, bos: int, streams: list[tuple[bytes, int]],
               groups: list[tuple[int, int, int]]) -> list[list[int] | None]:
        """Decode range-coder *streams* (words, token count) in one batch, all
        in the core: model, mixing (*groups*: start, count, frame version of
        consecutive streams sharing a mixer; the rest use the model alone) and
        range decoder.  None for a stream its encoder cannot have written."""
        return self.core.decode(bos, [(bytes(w), n) for w, n in streams], groups)

    def freqs(self, logits: torch.Tensor) -> torch.Tensor:
        """Integer frequencies (each row sums to 2**24 - V), as Engine.freqs."""
        lg = logits.to(torch.int64).contiguous().numpy()
        out = np.empty_like(lg)
        self.core.freqs(lg.tobytes(), out)
        return torch.from_numpy(out)
