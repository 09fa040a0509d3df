"""The float reference model: a small decoder-only transformer.

The architecture is chosen so that every operation has an exact integer
counterpart in ``engine.py``: RMSNorm (no mean), ALiBi attention (position
enters only as an integer distance bias, so a sliding window needs no
position re-encoding), GELU MLP, embedding tied to the output head.  This
module is used for training and as the float baseline; compression always
runs through the integer engine.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..model.intformat import Config, alibi_slope_exponents


def alibi_bias(n_head: int, q_len: int, k_len: int, window: int) -> torch.Tensor:
    """Additive attention bias [H, q, k]: -slope*distance, -inf outside the window."""
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]
    k_pos = torch.arange(k_len)[None, :]
    dist = (q_pos - k_pos).float()
    slopes = torch.tensor([2.0 ** -e for e in alibi_slope_exponents(n_head)])
    bias = -slopes[:, None, None] * dist[None]
    allowed = (dist >= 0) & (dist < window)
    return bias.masked_fill(~allowed[None], float("-inf"))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.w1 = nn.Linear(d, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, d, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, hd = self.cfg.n_head, self.cfg.head_dim
        y = self.norm1(x)
        q = self.wq(y).view(b, t, h, hd).transpose(1, 2)
        k = self.wk(y).view(b, t, h, hd).transpose(1, 2)
        v = self.wv(y).view(b, t, h, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(x.dtype))
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, d))
        return x + self.w2(F.gelu(self.w1(self.norm2(x))))


class Transformer(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2 style scaled init of residual projections
            for lin in (blk.wo, blk.w2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for token ids [B, T] (a causal, windowed model)."""
        t = idx.shape[1]
        bias = alibi_bias(self.cfg.n_head, t, t, self.cfg.window).to(idx.device)
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.norm_f(x) @ self.emb.weight.T
