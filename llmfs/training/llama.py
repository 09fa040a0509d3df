"""The float reference of Llama-architecture models (the strong tier).

RMSNorm, rotary positions on adjacent pairs (the GGUF layout), grouped-query
attention, SwiGLU MLP, embedding tied to the output head.  Attention sees the
last ``cfg.window`` tokens, as the integer engine does.  Used to calibrate
the integer model and as its float baseline; compression always runs
through ``engine.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .net import Config, RMSNorm


def rope_angles(cfg: Config, n: int) -> torch.Tensor:
    """Angle [n, head_dim/2] of position p and pair i: p * base**(-2i/head_dim), float64."""
    hd = cfg.head_dim
    inv = cfg.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    return torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of the last dim by the given angles."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)


class LlamaBlock(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.wq = nn.Linear(d, cfg.n_head * hd, bias=False)
        self.wk = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.wv = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.wo = nn.Linear(cfg.n_head * hd, d, bias=False)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.wg = nn.Linear(d, cfg.d_ff, bias=False)
        self.w1 = nn.Linear(d, cfg.d_ff, bias=False)   # "up"
        self.w2 = nn.Linear(cfg.d_ff, d, bias=False)   # "down"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, t, _ = x.shape
        hd, groups = cfg.head_dim, cfg.n_head // cfg.kv_heads
        y = self.norm1(x)
        q = self.wq(y).view(b, t, cfg.n_head, hd).transpose(1, 2)
        k = self.wk(y).view(b, t, cfg.kv_heads, hd).transpose(1, 2)
        v = self.wv(y).view(b, t, cfg.kv_heads, hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, -1))
        y = self.norm2(x)
        return x + self.w2(F.silu(self.wg(y)) * self.w1(y))


class Llama(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for token ids [B, T] at positions 0..T-1."""
        t = idx.shape[1]
        ang = rope_angles(self.cfg, t)
        cos, sin = ang.cos().float(), ang.sin().float()
        dist = torch.arange(t)[:, None] - torch.arange(t)[None, :]
        mask = torch.zeros(t, t).masked_fill(~((dist >= 0) & (dist < self.cfg.window)),
                                             float("-inf"))
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        return self.norm_f(x) @ self.emb.weight.T
