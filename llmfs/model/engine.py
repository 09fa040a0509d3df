"""Integer-exact inference: next-token frequency tables that are bit-identical
on every machine, batch size, thread count and chunking.

Float inference differs between batch sizes, threads, KV-cache vs full
evaluation and CPU vs GPU; arithmetic decoding breaks on the first differing
probability.  Here every value is an integer:

* weights are int8 with per-output-channel scales folded into integer
  requantisation multipliers (``acc * M >> SHIFT``);
* activations are int8 (per-channel static scales fixed in the model file);
* the residual stream is int64 fixed point (``FX`` fractional bits);
* int8 x int8 matmuls run as integer matmuls (``torch._int_mm``, int32
  sums) where probes at load show the CPU kernel exact -- oneDNN's kernels
  without VNNI saturate 16-bit partial sums, and the probe catches that --
  and faster than float32 (some exact kernels are 35-50x slower), and
  otherwise in float32, where every partial sum stays below 2**24
  (inner dimension <= 1024, checked at load); wider sums run in float64,
  exact below 2**53; all of these are exact in any order, so both paths
  give the same integers;
* RMSNorm uses an exact integer square root, GELU and exp are lookup tables
  stored in the model file, divisions are integer floor divisions.

``Engine.step`` advances a batch of sequences by ``n`` tokens and returns the
integer frequency table for each new position.  Encoding calls it with long
chunks (parallel over the window), decoding with ``n == 1`` (KV cache); both
give the same tables because each position sees exactly the same integers.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch

from .intformat import (EXACT_F32_K, FREQ_BITS, FX, H_MAX, H_SHIFT_MAX, NORM_CB, NORM_R, RECIP,
                        ROPE_BITS, SHIFT, Config, alibi_table)

BAND = 64            # queries per group in banded attention (long chunks)


def lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table[idx] for a 1-D table; int32 index_select is several times faster
    than advanced indexing with int64 on CPU."""
    return table.index_select(0, idx.reshape(-1).to(torch.int32)).view(idx.shape)


@functools.cache
def int8_mm_exact() -> bool:
    """Whether ``torch._int_mm`` gives exact int32 sums on this CPU.

    oneDNN computes int8 products with a 16-bit intermediate that saturates
    on CPUs without VNNI (wrong sums, silently).  All-127 operands saturate
    it at once; the probe covers the shapes that pick different kernels
    (one row, a few rows, many rows) and a random product."""
    try:
        for m, k, n in ((1, 64, 48), (3, 130, 40), (64, 128, 384), (300, 512, 128)):
            a = torch.full((m, k), 127, dtype=torch.int8)
            w = torch.full((n, k), 127, dtype=torch.int8).T     # the engine's weight layout
            if not bool((torch._int_mm(a, w) == 127 * 127 * k).all()):
                return False
            a, w = -a, torch.randint(-127, 128, (n, k), dtype=torch.int8,
                                     generator=torch.Generator().manual_seed(m)).T
            if not torch.equal(torch._int_mm(a, w).to(torch.int64),
                               exact_mm(a.to(torch.float32), w.to(torch.float32))):
                return False
    except RuntimeError:       # no CPU kernel in this build
        return False
    return True


@functools.cache
def int8_mm_pays() -> bool:
    """Whether the engine should run its int8 matmuls as ``torch._int_mm``:
    exact here (``int8_mm_exact``) and faster than the float32 path.

    Exact is not fast: on an AMD EPYC with AVX2 and no VNNI (2026-12-01),
    ``_int_mm`` gave exact sums at 1.3-1.9 GOP/s against 47-66 GFLOP/s for
    the float32 matmul on the same shapes, which made the codec about 3.5x
    slower end to end (dickens, 1 MiB: 3.6 / 2.9 KB/s encode / decode
    against 12.3 / 7.6 on the float32 path).  Both paths give the same integers, so a
    timing may choose between them."""
    if not int8_mm_exact():
        return False
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (64, 128), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (512, 128), dtype=torch.int8, generator=g)
    a_f, w_f = a.to(torch.float32), w.to(torch.float32).T.contiguous()

    def fastest(f) -> float:
        f()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    return fastest(lambda: torch._int_mm(a, w.T)) < fastest(lambda: a_f @ w_f)


def exact_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for int8-valued float32 operands, exact: inner dim split at 1024."""
    k = a.shape[-1]
    if k <= EXACT_F32_K:
        return (a @ b).to(torch.int64)
    out = None
    for i in range(0, k, EXACT_F32_K):
        part = (a[..., i:i + EXACT_F32_K] @ b[..., i:i + EXACT_F32_K, :]).to(torch.int64)
        out = part if out is None else out + part
    return out


def requant(acc: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
    """round(acc * mult / 2**SHIFT) in int64 (round half up)."""
    return (acc * mult + (1 << (SHIFT - 1))) >> SHIFT


def requant_wide(acc: torch.Tensor, mult: torch.Tensor, extra: int) -> torch.Tensor:
    """round(acc * mult / 2**(SHIFT + extra)) for |acc| < 2**53 and mult < 2**33
    without int64 overflow: acc is split at bit 24 and the halves scaled apart."""
    hi, lo = acc >> 24, acc & ((1 << 24) - 1)            # hi < 2**29, lo < 2**24
    t = SHIFT + extra - 24
    return (hi * mult + ((lo * mult + (1 << 23)) >> 24) + (1 << (t - 1))) >> t


def clamp8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(-127, 127)


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for int64 n in [0, 2**52).

    n is exact in float64 and sqrt is correctly rounded, hence monotonic and
    exact on perfect squares: for k = floor(sqrt(n)) < 2**26 the rounded root
    lies in [k, k + 1], so its floor is k or k + 1, and only the second needs
    fixing."""
    r = torch.sqrt(n.to(torch.float64)).to(torch.int64)
    return r - (r * r > n).to(torch.int64)


@dataclass
class LayerW:
    norm1: torch.Tensor    # [d] int64 RMSNorm gains (NORM_CB fractional bits) << NORM_R + 1
    wqkv: torch.Tensor     # [d, 3d] float32 holding int8 (transposed for x @ w)
    qkv_m: torch.Tensor    # [3d] requant multipliers to int8 q/k/v
    score_half: torch.Tensor   # [H, 1, 1] float32 2**(k-1): q.k -> logit units is
    score_scale: torch.Tensor  # [H, 1, 1] float32 2**-k     floor((q.k + half) * scale)
    wo: torch.Tensor       # [d, d]
    wo_m: torch.Tensor     # [d] -> residual units
    norm2: torch.Tensor
    w1: torch.Tensor       # [d, ff]
    w1_m: torch.Tensor     # [ff] -> GELU table index
    gelu: torch.Tensor     # [ff * (2N+1)] int64 GELU table, per channel, int8 values
    gelu_n: int
    w2: torch.Tensor       # [ff, d]
    w2_m: torch.Tensor     # [d] -> residual units
    wg: torch.Tensor | None = None     # llama: [d, ff] gate; w1 is "up", gelu the SiLU table
    wg_m: torch.Tensor | None = None   # [ff] gate -> SiLU table index
    h_m: torch.Tensor | None = None    # [ff] SiLU(gate) * up product -> int16
    h_shift: torch.Tensor | None = None  # [ff] left shift of each product channel


def kv_buffer(B: int, heads: int, cap: int, hd: int, device: torch.device,
              dtype: torch.dtype, keys: bool) -> torch.Tensor:
    """A zeroed cache buffer, indexed [B, heads, position, hd].  Keys are laid
    out [B, heads, hd, position] in memory (a transposed view), so ``q @ k^T``
    reads them contiguously: 1.5x faster for single-token steps."""
    if keys:
        return torch.zeros(B, heads, hd, cap, device=device, dtype=dtype).transpose(-1, -2)
    return torch.zeros(B, heads, cap, hd, device=device, dtype=dtype)


@dataclass
class KVCache:
    """Keys/values of the last ``window`` positions of each layer (int8 values)."""
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    fill: int = 0
    pos: int = 0      # absolute position of the next token (rotary models)

    def select(self, rows) -> None:
        """Keep only batch rows *rows* (sequences that are still decoding)."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        self.k = [t.transpose(-1, -2).index_select(0, rows.to(t.device)).transpose(-1, -2)
                  for t in self.k]
        self.v = [t.index_select(0, rows.to(t.device)) for t in self.v]


class Engine:
    """Exact integer forward pass of a quantised model (see ``export.py``)."""

    def __init__(self, cfg: Config, tensors: dict[str, torch.Tensor],
                 device: str | torch.device = "cpu", int8: bool | None = None) -> None:
        """*int8*: run int8 matmuls as integer matmuls (None: on CPU when the
        probes find them exact and faster); the tables are the same either way."""
        self.cfg = cfg
        self.device = torch.device(device)
        if int8 is None:
            int8 = self.device.type == "cpu" and int8_mm_pays()
        self.int8 = int8
        self.act = torch.int8 if int8 else torch.float32   # dtype of int8-valued activations
        torch.set_float32_matmul_precision("highest")  # no bf16/TF32 shortcuts
        if self.device.type == "cuda":  # TF32 would round the exact products
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if max(cfg.d_model, cfg.head_dim) > EXACT_F32_K:
            raise ValueError("d_model above the exact float32 limit")
        if cfg.window > 1 << 16:  # attention logits and biases must stay below 2**23
            raise ValueError("window above 65536 tokens")
        dev = self.device

        def t(name: str, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return tensors[name].to(dev, dtype)

        def w(name: str) -> torch.Tensor:
            q = tensors[name]
            if q.dtype != torch.int8:
                raise ValueError(f"{name} must be int8")
            if int8:       # [K, N] view of the stored [N, K]: the faster layout for _int_mm
                return q.to(dev).T
            return q.to(dev, torch.float32).T.contiguous()

        self.emb = t("emb")                   # [V, d] residual fixed point
        self.head = w("head")                 # [d, V]
        self.head_m = t("head_m")             # [V] -> logit units 1/ZV nat
        self.norm_f = t("norm_f") << (NORM_R + 1)   # RMSNorm gains pre-shifted, see _norm
        exp_attn = t("exp_attn")                      # exp(-i/ZA) * 2**16
        if exp_attn.min() < 0 or exp_attn.max() > 1 << 16:
            raise ValueError("attention exp table out of range")
        # e @ v sums up to window * 2**16 * 127: float64 in general; for short windows
        # the table is split as e = 256 * hi + lo and both halves run in float32
        # (sums <= window * 256 * 127 < 2**24), which is several times faster.
        self.exp_split = cfg.window * 256 * 127 < 1 << 24
        self.banded = bool(exp_attn[-1] == 0)   # masked keys weigh 0, so they may be left out
        self._step_bias: dict[int, torch.Tensor] = {}
        if self.exp_split:    # two 1-D tables: 2.5x faster lookups than one [N, 2] table
            self.exp_attn = (exp_attn >> 8).to(torch.float32)
            self.exp_attn_lo = (exp_attn & 255).to(torch.float32)
        else:
            self.exp_attn = exp_attn.to(torch.float64)
        self.v_dtype = torch.float32 if self.exp_split else torch.float64
        self.exp_vocab = t("exp_vocab")       # exp(-i/ZV) * 2**24
        H = cfg.n_head
        self.llama = cfg.arch == "llama"
        if cfg.arch not in ("alibi", "llama"):
            raise ValueError(f"unknown architecture {cfg.arch!r}")
        if H % cfg.kv_heads:
            raise ValueError("query heads must be a multiple of key/value heads")
        self.layers: list[LayerW] = []
        for i in range(cfg.n_layer):
            p = f"layers.{i}."
            gelu = t(p + "gelu")
            shift = t(p + "score_shift").view(H, 1, 1).to(torch.float32)
            if (shift < 1).any() or (shift > 30).any():
                raise ValueError("attention score shift out of range")
            extra = dict(wg=w(p + "wg"), wg_m=t(p + "wg_m"), h_m=t(p + "h_m"),
                         h_shift=t(p + "h_shift")) if self.llama else {}
            if self.llama and (cfg.d_ff > 2048 or (extra["h_shift"] < 0).any()
                               or (extra["h_shift"] > H_SHIFT_MAX).any()):
                raise ValueError("SwiGLU product shifts out of the exact float64 range")
            w2, w2_m = w(p + "w2"), t(p + "w2_m")
            if self.llama:        # float64 matmul; multipliers < 2**33, see requant_wide
                w2 = w2.to(torch.float64).contiguous()
                if (w2_m.abs() >= 1 << 33).any():
                    raise ValueError("w2 multipliers out of range")
            self.layers.append(LayerW(
                norm1=t(p + "norm1") << (NORM_R + 1), wqkv=w(p + "wqkv"), qkv_m=t(p + "qkv_m"),
                score_half=2.0 ** (shift - 1), score_scale=2.0 ** -shift,
                wo=w(p + "wo"), wo_m=t(p + "wo_m"),
                norm2=t(p + "norm2") << (NORM_R + 1), w1=w(p + "w1"), w1_m=t(p + "w1_m"),
                gelu=gelu.flatten().to(torch.int64 if self.llama else self.act),
                gelu_n=(gelu.shape[1] - 1) // 2,
                w2=w2, w2_m=w2_m, **extra))
        if self.llama:
            # rotary tables: round(cos/sin(angle) * 2**ROPE_BITS) per position and pair
            self.rope_cos = t("rope_cos", torch.float32)
            self.rope_sin = t("rope_sin", torch.float32)
            if self.rope_cos.abs().max() > 1 << ROPE_BITS:
                raise ValueError("rotary table out of range")
            self.alibi = torch.zeros(H, cfg.window, device=dev)
        else:
            self.alibi = torch.tensor(alibi_table(H, cfg.window), dtype=torch.float32, device=dev)
        self.total = (1 << FREQ_BITS) - cfg.vocab  # constriction adds 1 to every symbol
        self.ff_base = (torch.arange(cfg.d_ff, device=dev) * (2 * self.layers[0].gelu_n + 1)
                        if self.layers else None)

    # -- building blocks -------------------------------------------------
    def _mm(self, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Exact a @ w of int8-valued activations and int8 weights (int32 or int64)."""
        if not self.int8:
            return exact_mm(a, w)
        return torch._int_mm(a.reshape(-1, a.shape[-1]), w).view(*a.shape[:-1], w.shape[1])

    def _norm(self, x: torch.Tensor, gain2: torch.Tensor) -> torch.Tensor:
        """Integer RMSNorm of residual x (int64) -> int8-valued activations:
        round((x * gain << NORM_R) / (rms << NORM_CB)), half up, computed as
        floor((x * gain2 + den) / 2den) with gain2 = gain << (NORM_R + 1)
        shifted at load (two fewer passes over x than the plain formula)."""
        d = x.shape[-1]
        ss = (x * x).sum(-1, keepdim=True)
        eps = int(self.cfg.norm_eps * (1 << (2 * (FX + NORM_R))))
        r = isqrt(torch.div(ss << (2 * NORM_R), d, rounding_mode="floor") + eps)
        den = r << NORM_CB
        y = torch.div(x * gain2 + den, den << 1, rounding_mode="floor")
        return clamp8(y).to(self.act)

    def _first_key(self, fill: int) -> int:
        """The first cached key that the first of the next queries may see."""
        return max(0, fill - self.cfg.window + 1)

    def _window_bias(self, fill: int, n: int) -> torch.Tensor:
        """The ALiBi bias [H, n, keys from _first_key on] with keys outside the
        window pushed to -2**23 (weight exactly 0).  Single-token steps
        (decoding) reuse one per cache fill."""
        if n == 1 and fill in self._step_bias:
            return self._step_bias[fill]
        W = self.cfg.window
        dist = (torch.arange(fill, fill + n, device=self.device)[:, None]
                - torch.arange(self._first_key(fill), fill + n, device=self.device)[None, :])
        bias = self.alibi[:, dist.clamp(0, W - 1)].masked_fill_((dist < 0) | (dist >= W),
                                                                float(1 << 23))
        if n == 1:     # fill < window + 64 when decoding: a small, bounded set
            self._step_bias[fill] = bias
        return bias

    def _band_bias(self, fill: int, n: int) -> torch.Tensor:
        """The bias [H, groups, BAND, W - 1 + BAND] of banded attention: group g
        (queries fill + g*BAND ...) sees the keys from W - 1 before its first
        query to its last; keys outside a query's window, or before the first
        cached key, weigh exactly 0 as in ``_window_bias``."""
        W, G, dev = self.cfg.window, BAND, self.device
        L, ng = W - 1 + G, n // G
        dist = torch.arange(G, device=dev)[:, None] + W - 1 - torch.arange(L, device=dev)
        bias = self.alibi[:, dist.clamp(0, W - 1)].masked_fill_((dist < 0) | (dist >= W),
                                                                float(1 << 23))
        key = fill - W + 1 + G * torch.arange(ng, device=dev)[:, None] + torch.arange(L, device=dev)
        return bias[:, None].masked_fill((key < 0)[None, :, None, :], float(1 << 23))

    def _attention(self, lw: LayerW, y: torch.Tensor, cache: KVCache, li: int,
                   bias: torch.Tensor) -> torch.Tensor:
        """Attention over the cache; with a 4-d *bias* (see ``_band_bias``) the
        queries run in groups of BAND, each against only the keys it can see
        (W - 1 + BAND instead of W - 1 + n), which gives the same integers since
        every key outside a window weighs exactly 0."""
        cfg = self.cfg
        B, n, _ = y.shape
        H, hd, W, KV = cfg.n_head, cfg.head_dim, cfg.window, cfg.kv_heads
        qkv = clamp8(requant(self._mm(y, lw.wqkv), lw.qkv_m)).to(torch.float32)
        q = qkv[..., :H * hd].view(B, n, H, hd).transpose(1, 2)          # [B, H, n, hd]
        k, v = qkv[..., H * hd:].view(B, n, 2, KV, hd).permute(2, 0, 3, 1, 4)
        if self.llama:
            q, k = self._rotate(q, cache.pos), self._rotate(k, cache.pos)
        q = q.contiguous()
        if li == len(cache.k):
            cap = W + max(n, 64)
            cache.k.append(kv_buffer(B, KV, cap, hd, y.device, torch.float32, keys=True))
            cache.v.append(kv_buffer(B, KV, cap, hd, y.device, self.v_dtype, keys=False))
        ck, cv = cache.k[li], cache.v[li]
        fill, start = cache.fill, self._first_key(cache.fill)
        ck[:, :, fill:fill + n] = k
        cv[:, :, fill:fill + n] = v
        keys, vals = ck[:, :, start:fill + n], cv[:, :, start:fill + n]
        half, scale = lw.score_half, lw.score_scale
        if bias.dim() == 4:    # banded: pad to W - 1 keys before the first query, then
            pad = W - 1 - (fill - start)   # overlapping windows [B, KV, groups, W-1+BAND, hd]
            keys, vals = (torch.cat([t.new_zeros(B, KV, pad, hd), t], 2)
                          .unfold(2, W - 1 + BAND, BAND).transpose(-1, -2) for t in (keys, vals))
            q = q.view(B, H, n // BAND, BAND, hd)
            half, scale = half[..., None], scale[..., None]
        if KV != H:   # grouped-query attention: each key/value head serves H/KV query heads
            keys = keys.repeat_interleave(H // KV, 1)
            vals = vals.repeat_interleave(H // KV, 1)
        # All float32 values below are integers < 2**24, so every op is exact:
        # |q.k| < 2**21 (rotated |q|, |k| <= 180), adding 2**(k-1) and scaling by
        # 2**-k are exact, floor too.
        dots = q @ keys.transpose(-1, -2)
        z = torch.floor((dots + half) * scale) - bias
        gap = (z.amax(-1, keepdim=True) - z).clamp_(max=self.exp_attn.shape[0] - 1)
        gap = gap.to(torch.int32)
        e = lookup(self.exp_attn, gap)
        rows = dots.shape[-2]
        if self.exp_split:    # hi rows, then lo rows: [..., 2 rows, keys]
            e = torch.cat([e, lookup(self.exp_attn_lo, gap)], -2)
        s = e.sum(-1, keepdim=True).to(torch.int64)                     # exact: < 2**24 / 2**53
        num = (e @ vals).to(torch.int64)                                # exact: < 2**24 / 2**53
        if self.exp_split:
            s = (s[..., :rows, :] << 8) + s[..., rows:, :]
            num = (num[..., :rows, :] << 8) + num[..., rows:, :]
        inv = torch.div(1 << RECIP, s, rounding_mode="floor")           # one division per row
        o = (num * inv + (1 << (RECIP - 1))) >> RECIP                   # ~ round(num / s)
        return o.view(B, H, n, hd).transpose(1, 2).reshape(B, n, H * hd).to(self.act)

    def _rotate(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        """Rotary positions on int8-valued x [B, heads, n, hd] (adjacent pairs):
        floor((a*cos - b*sin) / 2**ROPE_BITS + 1/2), exact in float32 since
        every product and sum stays below 2**22; results lie in [-180, 180]."""
        n = x.shape[2]
        if pos + n > self.rope_cos.shape[0]:
            raise ValueError(f"position {pos + n} beyond the rotary table")
        c, s = self.rope_cos[pos:pos + n], self.rope_sin[pos:pos + n]
        a, b = x[..., 0::2], x[..., 1::2]
        half, scale = float(1 << (ROPE_BITS - 1)), 2.0 ** -ROPE_BITS
        ra = torch.floor((a * c - b * s + half) * scale)
        rb = torch.floor((a * s + b * c + half) * scale)
        return torch.stack([ra, rb], -1).flatten(-2)

    def _mlp(self, lw: LayerW, y: torch.Tensor) -> torch.Tensor:
        n = lw.gelu_n
        if lw.wg is None:      # GELU(y @ w1) @ w2
            idx = requant(self._mm(y, lw.w1), lw.w1_m).clamp_(-n, n) + n
            h = lookup(lw.gelu, idx + self.ff_base)
        else:                  # (SiLU(y @ wg) * (y @ w1)) @ w2 with an int16 product:
            idx = requant(self._mm(y, lw.wg), lw.wg_m).clamp_(-n, n) + n
            up = clamp8(requant(self._mm(y, lw.w1), lw.w1_m))
            h = requant(lookup(lw.gelu, idx + self.ff_base) * up, lw.h_m).clamp_(-H_MAX, H_MAX)
            h = h << lw.h_shift    # per-channel power-of-two scales, as integers
            # |sum| <= d_ff * 127 * 32767 * 2**20 < 2**53: exact in float64 in any order
            return requant_wide((h.to(torch.float64) @ lw.w2).to(torch.int64), lw.w2_m,
                                H_SHIFT_MAX)
        return requant(self._mm(h, lw.w2), lw.w2_m)

    # -- public API ------------------------------------------------------
    def new_cache(self) -> KVCache:
        """An empty key/value cache for :meth:`step`."""
        return KVCache()

    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Advance a batch by ``n`` tokens; returns int64 logits [B, n, V] in units 1/ZV nat.

        Logits at position t predict token t+1.  ``tokens`` is [B, n].
        """
        cfg = self.cfg
        B, n = tokens.shape
        if cache.fill + n > (cache.k[0].shape[2] if cache.k else cfg.window + max(n, 64)):
            self._compact(cache, n)
        x = self.emb[tokens.to(self.device)]                            # [B, n, d] int64
        if self.banded and n >= 2 * BAND and n % BAND == 0:
            bias = self._band_bias(cache.fill, n)
        else:
            bias = self._window_bias(cache.fill, n)
        for li, lw in enumerate(self.layers):
            a = self._attention(lw, self._norm(x, lw.norm1), cache, li, bias)
            x = x + requant(self._mm(a, lw.wo), lw.wo_m)
            x = x + self._mlp(lw, self._norm(x, lw.norm2))
        cache.fill += n
        cache.pos += n
        y = self._norm(x, self.norm_f)
        return requant(self._mm(y, self.head), self.head_m)

    def _compact(self, cache: KVCache, n: int) -> None:
        """Drop keys older than the window so ``n`` more positions fit."""
        W = self.cfg.window
        keep = min(cache.fill, W)
        need = keep + n
        for lst, keys in ((cache.k, True), (cache.v, False)):
            for i, t in enumerate(lst):
                if t.shape[2] < need:
                    new = kv_buffer(t.shape[0], t.shape[1], W + max(n, 64), t.shape[3],
                                    t.device, t.dtype, keys)
                else:
                    new = t
                new[:, :, :keep] = t[:, :, cache.fill - keep:cache.fill].clone()
                lst[i] = new
        cache.fill = keep

    def freqs(self, logits: torch.Tensor) -> torch.Tensor:
        """Integer frequencies (each row sums to 2**24 - V) from integer logits.

        The range coder adds one to every symbol, so no symbol is impossible
        and the total is exactly 2**24.  The rounding remainder goes to the
        first most likely symbol.
        """
        zmax = logits.amax(-1, keepdim=True)
        e = lookup(self.exp_vocab, (zmax - logits).clamp_(max=self.exp_vocab.numel() - 1))
        # f = floor(e * T / sum e) up to rounding, as e * R >> 32 with one division per row;
        # the sum stays <= T because R <= T * 2**32 / sum e.
        r = torch.div(self.total << 32, e.sum(-1, keepdim=True), rounding_mode="floor")
        f = (e * r) >> 32
        rem = self.total - f.sum(-1, keepdim=True)
        first = logits.argmax(-1, keepdim=True)    # documented: the first maximal index
        return f.scatter_add_(-1, first, rem)
