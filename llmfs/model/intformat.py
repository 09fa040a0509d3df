"""The integer model format without torch: its config and its fixed-point
constants.  The native core's loader (``native.py``) and the codec import
them from here, so decoding with the core never imports torch."""
from __future__ import annotations

from dataclasses import asdict, dataclass

SHIFT = 24           # requantisation multipliers are fixed point with 24 fractional bits
FX = 10              # residual stream: value = x / 2**FX
NORM_R = 6           # extra bits of the RMS in RMSNorm
NORM_CB = 16         # fractional bits of the RMSNorm per-channel gains
ZA = 64              # attention logits are in units of 1/ZA nat
ZV = 256             # vocabulary logits are in units of 1/ZV nat
FREQ_BITS = 24       # the range coder's total frequency is 2**FREQ_BITS
EXACT_F32_K = 1024   # int8 x int8 sums over K <= 1024 stay below 2**24
RECIP = 40           # fixed-point bits of per-row reciprocals (one division per row)
ROPE_BITS = 14       # rotary tables are cos/sin * 2**ROPE_BITS
H_MAX = 32767        # llama: the SwiGLU product is int16 ...
H_SHIFT_MAX = 20     # ... shifted left by <= 20 bits per channel; its matmul runs in float64


@dataclass(frozen=True)
class Config:
    vocab: int = 2048
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 512
    window: int = 256  # tokens of context a prediction may see
    norm_eps: float = 1e-5
    arch: str = "alibi"      # "alibi": GELU MLP, ALiBi (this file); "llama": SwiGLU, RoPE, GQA
    n_kv_head: int = 0       # llama: key/value heads (0: as many as query heads)
    head_size: int = 0       # llama: per-head width (0: d_model / n_head)
    rope_base: float = 0.0   # llama: rotary base

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


def alibi_slope_exponents(n_head: int) -> list[int]:
    """Head h has slope 2**-e_h; powers of two keep the integer bias exact."""
    if n_head & (n_head - 1) or not 1 <= n_head <= 8:
        raise ValueError("n_head must be 1, 2, 4 or 8")
    return [(8 * (h + 1)) // n_head for h in range(n_head)]


def alibi_table(n_head: int, window: int) -> list[list[int]]:
    """ALiBi bias by head and distance: round(d * ZA / 2**e_h), exact in
    integers (the torch engine and the native core both read it)."""
    return [[(d * ZA + (1 << (e - 1))) >> e for d in range(window)]
            for e in alibi_slope_exponents(n_head)]
