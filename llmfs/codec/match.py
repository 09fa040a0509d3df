"""The match model: long repeats the language model's window cannot see.

The model predicts each token from the previous ``window`` tokens only (256
for the default), but a 64 KiB block often repeats itself further back:
names in prose, tags and attribute runs in XML, records in tables.  As in
lpaq, a match model finds the last earlier occurrence of the current context
(the longest of ``ORDERS`` tokens that occurred before) and predicts that the
token which followed it comes again.

The block's streams (``segments.py``) are decoded in lockstep, one token of
each per step, so they can share their history without giving up the batch:
at step ``s`` a stream may match against the first ``s`` tokens of every
stream of its block, its own included.  That keeps most of what one stream
over the whole block would find (``docs/ARCHITECTURE.md``, "Match model").

How far to trust a match is learnt per stream: counts of how often such
predictions came true, by match length and by how likely the model already
finds the predicted token.  The model's table is then rescaled so the
predicted token gets that probability and the others share the rest in their
old proportions (secondary estimation: a match the model already predicts
costs nothing, a bad one little).  Everything is integer arithmetic on the
engine's exact tables, so encoder and decoder compute the same tables.
"""
from __future__ import annotations

import numpy as np

from ..model.intformat import FREQ_BITS

ORDERS = (8, 4, 2, 1)   # context lengths looked up after a miss, longest first
VERIFY = 64             # a new match's length is counted back at most this far
TOTAL = 1 << FREQ_BITS  # the coder's total: each entry of a table counts f + 1
_LEN_BUCKETS = 24
_PROB_BUCKETS = 2 * FREQ_BITS + 1


def _len_bucket(n: int) -> int:
    """Match lengths 1..15 exactly, then one bucket per doubling (up to 23)."""
    return n if n < 16 else min(_LEN_BUCKETS - 1, 11 + n.bit_length())


def _prob_bucket(f: int) -> int:
    """The model's probability of the predicted token, (f + 1) / TOTAL, on a
    logistic scale: one bucket per halving of p, or of 1 - p above one half."""
    f += 1
    return f.bit_length() if 2 * f <= TOTAL else _PROB_BUCKETS - 1 - (TOTAL - f).bit_length()


class MatchGroup:
    """Match finding for the streams of one block, advanced in lockstep.

    Per step: ``predictions()`` gives, for every stream, the predicted next
    token and the current match length (or None); then ``append(k, tok)``
    for every stream that had a token at this step.  A stream is active at
    step ``s`` while it holds exactly ``s`` tokens."""

    def __init__(self, n_streams: int) -> None:
        self.hists: list[list[int]] = [[] for _ in range(n_streams)]
        self.index: dict[tuple[int, ...], tuple[int, int]] = {}  # context -> (stream, next pos)
        self.src = [0] * n_streams      # stream the match points into
        self.ptr = [0] * n_streams      # position there of the predicted token
        self.length = [0] * n_streams   # tokens matched; 0: no match
        self.step = 0

    def predictions(self) -> list[tuple[int, int] | None]:
        """(predicted token, match length) per stream at this step; None where
        there is no match or the stream has ended."""
        s, hists, index = self.step, self.hists, self.index
        pos = s - 1       # the newest token every active stream has: index what precedes it
        for j, h in enumerate(hists):
            if pos < len(h):
                for k in ORDERS:
                    if pos >= k:
                        index[tuple(h[pos - k:pos])] = (j, pos)
        out: list[tuple[int, int] | None] = []
        for i, h in enumerate(hists):
            if len(h) != s:
                out.append(None)
                continue
            if self.length[i] and self.ptr[i] >= len(hists[self.src[i]]):
                self.length[i] = 0          # the source stream has ended
            if not self.length[i]:
                self._find(i, h, s)
            out.append((hists[self.src[i]][self.ptr[i]], self.length[i])
                       if self.length[i] else None)
        self.step += 1
        return out

    def _find(self, i: int, h: list[int], s: int) -> None:
        for k in ORDERS:
            hit = self.index.get(tuple(h[s - k:s])) if s >= k else None
            if hit is not None:
                j, pos = hit
                src, n = self.hists[j], k
                while n < VERIFY and pos > n and s > n and src[pos - 1 - n] == h[s - 1 - n]:
                    n += 1
                self.src[i], self.ptr[i], self.length[i] = j, pos, n
                return

    def append(self, i: int, tok: int) -> None:
        """Stream *i*'s token at this step (after ``predictions``)."""
        if self.length[i]:
            if self.hists[self.src[i]][self.ptr[i]] == tok:
                self.length[i] += 1
                self.ptr[i] += 1
            else:
                self.length[i] = 0
        self.hists[i].append(tok)


class Confidence:
    """How often a stream's matches came true, in two levels: (misses, hits)
    per model-probability bucket (starting at 1:1, counting by 2), which
    learns fast, and per (length bucket, probability bucket), which starts
    from the first level's rate with the weight of ``PRIOR`` observations.

    One level alone (all 1:1) cost a model fine-tuned on logs 22 % (each of
    its many buckets first gave a doubtful match one half); the coarse level
    learns within a few tokens that matches the model finds unlikely rarely
    come true."""

    PRIOR = 2

    def __init__(self) -> None:
        self.coarse = [[1, 1] for _ in range(_PROB_BUCKETS)]
        self.fine = [[0, 0] for _ in range(_LEN_BUCKETS * _PROB_BUCKETS)]
        self._ctx = (0, 0)

    def prob(self, length: int, f: int) -> int:
        """Probability, in 1/TOTAL, for a predicted token of model frequency *f*:
        (hits + PRIOR * rate) / (tries + PRIOR), rate the coarse level's."""
        q = _prob_bucket(f)
        self._ctx = (q, _len_bucket(length) * _PROB_BUCKETS + q)
        c_miss, c_hit = self.coarse[q]
        miss, hit = self.fine[self._ctx[1]]
        c = c_miss + c_hit
        return (hit * c + self.PRIOR * c_hit) * TOTAL // ((miss + hit + self.PRIOR) * c)

    def learn(self, hit: bool) -> None:
        """Whether the prediction last passed to ``prob`` came true."""
        self.coarse[self._ctx[0]][hit] += 2
        self.fine[self._ctx[1]][hit] += 1


def mix(freqs: np.ndarray, rows: list[int], syms: list[int], probs: list[int]) -> None:
    """Give token ``syms[r]`` probability ``probs[r]`` / TOTAL in table ``rows[r]``
    of *freqs* (int64, each row sums to S = TOTAL - V), in place.

    The other entries are scaled by (S + 1 - p) / (S - f) in 32-bit fixed
    point, so they keep their proportions and sum to at most S + 1 - p; the
    predicted token takes the remainder (at least p - 1: rounding favours
    it).  No product exceeds S * 2**32.  A table that puts all its mass on
    the predicted token is left as it is."""
    if not rows:
        return
    r = np.asarray(rows)
    s = np.asarray(syms)
    total = TOTAL - freqs.shape[1]
    f = freqs[r, s]
    p = np.minimum(np.asarray(probs, dtype=np.int64), total)
    keep = f < total
    r, s, f, p = r[keep], s[keep], f[keep], p[keep]
    scale = ((total + 1 - p) << 32) // (total - f)
    t = (freqs[r] * scale[:, None]) >> 32
    t[np.arange(len(r)), s] = 0
    t[np.arange(len(r)), s] = total - t.sum(1)
    freqs[r] = t
