"""Float Llama -> integer model tensors (post-training quantisation).

The same scheme as ``export.py`` (per-row int8 weights, per-channel static
activation scales fixed in the file, power-of-two attention score shifts,
per-channel lookup tables) plus what Llama adds: rotary tables, grouped
key/value heads, and the SwiGLU product requantised to int16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.intformat import FX, H_MAX, H_SHIFT_MAX, NORM_CB, ROPE_BITS, ZV
from .export import (
    GELU_N,
    _mult,
    _quant_rows,
    attention_scales,
    exp_tables,
    record_maxima,
)
from .llama import Llama, rope_angles

ROPE_POSITIONS = 4096     # rotary table length: a segment (2048 tokens) plus its context token
# The SwiGLU product is heavy-tailed: clamping it at the calibrated maximum cost
# 3.4 % bpb (spikes on unseen text); int16 with 16x headroom costs 0.02 %.
H_HEADROOM = 16


def calibrate(model: Llama, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Max |activation| per channel at every quantisation point; the SwiGLU
    product is what ``w2`` receives."""
    points = [(f"{i}.{name}", mod, name == "h") for i, blk in enumerate(model.blocks)
              for mod, name in ((blk.norm1, "n1"), (blk.wq, "q"), (blk.wk, "k"),
                                (blk.wv, "v"), (blk.norm2, "n2"), (blk.wg, "g"),
                                (blk.w1, "u"), (blk.w2, "h"))]
    return record_maxima(model, batch, points + [("nf", model.norm_f, False)])


def quantize_llama(model: Llama, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """Integer tensors for ``Engine`` (arch "llama") from a float model and calibration tokens."""
    cfg = model.cfg
    st = calibrate(model, calib)
    H, KV, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
    groups = H // KV
    sd = {k: v.double() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    emb = sd["emb.weight"]
    e = torch.round(emb * (1 << FX))
    out["emb"] = e.to(torch.int16 if e.abs().max() < 1 << 15 else torch.int32)  # halves 113 MB
    grid = torch.arange(-GELU_N, GELU_N + 1, dtype=torch.float64) / GELU_N
    for i in range(cfg.n_layer):
        p, o = f"blocks.{i}.", f"layers.{i}."
        s1 = st[f"{i}.n1"] / 127
        out[o + "norm1"] = torch.round(sd[p + "norm1.weight"] / s1 * (1 << NORM_CB)).long()
        wqkv = torch.cat([sd[p + "wq.weight"], sd[p + "wk.weight"], sd[p + "wv.weight"]]) * s1
        q8, sw = _quant_rows(wqkv)
        sq = st[f"{i}.q"].view(H, hd).amax(1) / 127            # per head (rotation-safe)
        sk = st[f"{i}.k"].view(KV, hd).amax(1) / 127
        sv = st[f"{i}.v"] / 127                                 # per channel
        sq, shift = attention_scales(sq, sk.repeat_interleave(groups), hd)
        out[o + "wqkv"] = q8
        out[o + "qkv_m"] = _mult(sw / torch.cat([sq.repeat_interleave(hd),
                                                 sk.repeat_interleave(hd), sv]))
        out[o + "score_shift"] = shift.to(torch.int64)
        sv_q = sv.view(KV, hd).repeat_interleave(groups, 0).flatten()  # per attention channel
        wo8, swo = _quant_rows(sd[p + "wo.weight"] * sv_q)
        out[o + "wo"], out[o + "wo_m"] = wo8, _mult(swo * (1 << FX))
        s2 = st[f"{i}.n2"] / 127
        out[o + "norm2"] = torch.round(sd[p + "norm2.weight"] / s2 * (1 << NORM_CB)).long()
        rg = st[f"{i}.g"]                                       # gate range per channel
        wg8, swg = _quant_rows(sd[p + "wg.weight"] * s2)
        out[o + "wg"], out[o + "wg_m"] = wg8, _mult(swg * GELU_N / rg)
        act = F.silu(grid[None, :] * rg[:, None])               # [ff, 2N+1]
        # int16 table: an int8 SiLU (step max/127 per channel) cost 2.5 % bpb
        sa = act.abs().amax(1).clamp(min=1e-9) / 32767
        out[o + "gelu"] = torch.round(act / sa[:, None]).clamp(-32767, 32767).to(torch.int16)
        su = st[f"{i}.u"] / 127
        w18, sw1 = _quant_rows(sd[p + "w1.weight"] * s2)
        out[o + "w1"], out[o + "w1_m"] = w18, _mult(sw1 / su)
        # h channel c is int16 in units base * 2**k_c; the engine shifts it left by
        # k_c before the float64 matmul, so w2 is quantised without per-channel
        # folding (folding the h scales into w2's rows cost 2.5 % bpb).
        sh = st[f"{i}.h"] * H_HEADROOM / H_MAX   # int16: spikes far past calibration fit
        base = sh.max() / 2.0 ** H_SHIFT_MAX
        k = torch.ceil(torch.log2(sh / base)).clamp(min=0)
        out[o + "h_m"] = _mult(sa * su / (base * 2.0 ** k))
        out[o + "h_shift"] = k.to(torch.int64)
        w28, sw2 = _quant_rows(sd[p + "w2.weight"])
        out[o + "w2"] = w28       # w2_m carries 2**H_SHIFT_MAX more bits (requant_wide)
        out[o + "w2_m"] = _mult(sw2 * base * 2.0 ** H_SHIFT_MAX * (1 << FX))
    sf = st["nf"] / 127
    out["norm_f"] = torch.round(sd["norm_f.weight"] / sf * (1 << NORM_CB)).long()
    h8, se = _quant_rows(emb * sf)
    out["head"], out["head_m"] = h8, _mult(se * ZV)
    ang = rope_angles(cfg, ROPE_POSITIONS)
    out["rope_cos"] = torch.round(ang.cos() * (1 << ROPE_BITS)).to(torch.int32)
    out["rope_sin"] = torch.round(ang.sin() * (1 << ROPE_BITS)).to(torch.int32)
    out.update(exp_tables())
    return out
