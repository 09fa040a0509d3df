"""The native exact core (``_core.c``, ``_mix.c``) behind the engine's interface.

``NativeEngine`` reads the integer tensors straight from the model file
(numpy, no torch: a worker that decodes with the core never imports torch,
which saves seconds on a cold start), packs them into the core's layout once
and answers ``step`` / ``freqs`` / ``new_cache`` with the torch engine's
integers, and ``decode`` with whole batches of streams.  Both architectures
run here: the ALiBi models (the shipped default, technical and starter) and
the strong tier's rotary Llama.

``LLMFS_ENGINE=torch`` forces the torch engine (for comparison);
``LLMFS_ENGINE=native`` makes a missing core an error instead of a fallback.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np
from safetensors.numpy import load

from .intformat import FREQ_BITS, FX, NORM_R, Config, alibi_table

if TYPE_CHECKING:
    from .engine import Engine
    from .modelfile import LanguageModel

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
    """The SIMD path the core runs ("avx512vnni", "avx2" or "portable");
    *path* switches to another (every path gives the same integers)."""
    if _core is None:
        return "none"
    return _core.simd(path) if path else _core.simd()


def threads(n: int | None = None) -> int:
    """The threads one decode step or encoder chunk of the core runs on in
    this process; *n* sets them (the calling thread and n - 1 helpers, which
    split a block's streams).  Any count gives the same integers; 1 (the
    default) leaves the other cores to other processes."""
    if _core is None:
        return 1
    return _core.threads(n) if n else _core.threads()


def choose(model: LanguageModel) -> Engine | NativeEngine:
    """The engine to run *model* with, as LLMFS_ENGINE says."""
    choice = wanted()
    if choice == "torch" or model.device != "cpu":
        return model.engine
    if _core is None:
        if choice == "native":
            raise RuntimeError(f"the native core is not built ({_why}); reinstall llmfs "
                               "with a C compiler (apt install gcc python3-dev)")
        log.warning("native core not built (%s): running the slower torch engine; "
                    "reinstall llmfs with gcc and python3-dev to build it", _why)
        return model.engine
    return NativeEngine.of(model)


def mixer(n_streams: int, version: int, vocab: int):
    """The core's mixer of one block's streams (``codec/mixer.py``'s interface)."""
    return _core.Mixer(n_streams, version, vocab)


def _int8(tensors: dict[str, np.ndarray], name: str) -> bytes:
    """A weight as stored, [N, K] int8 rows: the core packs it."""
    if tensors[name].dtype != np.int8:
        raise ValueError(f"{name} must be int8")
    return np.ascontiguousarray(tensors[name]).tobytes()


class NativeCache:
    """The key/value cache of a batch; made on the first step."""

    def __init__(self) -> None:
        self.core = None

    @property
    def fill(self) -> int:
        return self.core.fill if self.core is not None else 0

    def select(self, rows) -> None:
        self.core.select([int(r) for r in rows])


class NativeEngine:
    """The integer engine of a model on the native core: the torch engine's
    tables (``engine.py`` is the reference, tests/test_native.py)."""

    def __init__(self, cfg: Config, tensors: dict[str, np.ndarray]) -> None:
        self.cfg = cfg
        llama = cfg.arch == "llama"
        if cfg.arch not in ("alibi", "llama"):
            raise ValueError(f"unknown architecture {cfg.arch!r}")

        def ints(name: str, dtype=np.int64, shift: int = 0) -> bytes:
            t = tensors[name].astype(np.int64) << shift
            if t.size and (t.min() < np.iinfo(dtype).min or t.max() > np.iinfo(dtype).max):
                raise ValueError(f"{name} out of the core's {np.dtype(dtype).name} range")
            return t.astype(dtype).tobytes()

        if llama:       # no position bias: keys outside the window are out of the ring
            bias = np.zeros((cfg.n_head, cfg.window), dtype=np.int32)
        else:
            bias = np.array(alibi_table(cfg.n_head, cfg.window), dtype=np.int32)
        gain = NORM_R + 1                               # RMSNorm gains pre-shifted (engine._norm)
        bufs = [ints("emb", np.int32), _int8(tensors, "head"), ints("head_m"),
                ints("norm_f", shift=gain), ints("exp_vocab"), ints("exp_attn"), bias.tobytes()]
        if llama:
            bufs += [ints("rope_cos", np.int32), ints("rope_sin", np.int32)]
        for i in range(cfg.n_layer):
            p = f"layers.{i}."
            bufs += [_int8(tensors, p + "wqkv"), ints(p + "qkv_m"), _int8(tensors, p + "wo"),
                     ints(p + "wo_m"), _int8(tensors, p + "w1"), ints(p + "w1_m"),
                     _int8(tensors, p + "w2"), ints(p + "w2_m"),
                     ints(p + "gelu", np.int16 if llama else np.int8),
                     ints(p + "norm1", shift=gain), ints(p + "norm2", shift=gain),
                     ints(p + "score_shift", np.int32)]
            if llama:   # SwiGLU: the gate, its and the product's multipliers, the shifts
                bufs += [_int8(tensors, p + "wg"), ints(p + "wg_m"), ints(p + "h_m"),
                         ints(p + "h_shift")]
        gelu_n = (tensors["layers.0.gelu"].shape[1] - 1) // 2 if cfg.n_layer else 0
        eps = int(cfg.norm_eps * (1 << (2 * (FX + NORM_R))))
        n_rope = tensors["rope_cos"].shape[0] if llama else 0
        dims = (cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.d_ff, cfg.vocab,
                cfg.n_layer, cfg.window, gelu_n, tensors["exp_attn"].size,
                tensors["exp_vocab"].size, eps, (1 << FREQ_BITS) - cfg.vocab, int(llama),
                n_rope)
        self.core = _core.Model(dims, bufs)

    @classmethod
    def of(cls, model: LanguageModel) -> NativeEngine:
        return cls(model.cfg, load(model.data))

    def new_cache(self) -> NativeCache:
        return NativeCache()

    def step(self, tokens: np.ndarray, cache: NativeCache) -> np.ndarray:
        """Advance a batch by ``n`` tokens; int64 logits [B, n, V] (1/ZV nat)."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        B, n = tokens.shape
        if cache.core is None:
            cache.core = _core.Cache(self.core, B)
        out = np.empty((B, n, self.cfg.vocab), dtype=np.int64)
        cache.core.step(tokens, n, out)
        return out

    def freqs(self, logits: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Integer frequencies (each row sums to 2**24 - V), as Engine.freqs;
        *inplace* writes them over *logits* (an int64 array of the core's)."""
        lg = np.ascontiguousarray(logits, dtype=np.int64)
        out = lg if inplace else np.empty_like(lg)
        self.core.freqs(lg, out)
        return out

    def decode(self, bos: int, streams: list[tuple[bytes, int]],
               groups: list[tuple[int, int, int]]) -> list[list[int] | None]:
        """Decode range-coder *streams* (words, token count) in one batch, all
        in the core: model, mixing (*groups*: start, count, frame version of
        consecutive streams sharing a mixer; the rest use the model alone) and
        range decoder.  None for a stream its encoder cannot have written."""
        return self.core.decode(bos, [(bytes(w), n) for w, n in streams], groups)
