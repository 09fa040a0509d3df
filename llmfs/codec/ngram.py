"""Token n-gram caches of the block itself, mixed with the model's tables.

The default model is small and was trained on technical text: on a novel,
a wiki dump or XML it keeps paying for the same names, words and phrases
all through a block.  Adaptive caches learn them as the block goes: how
often each token came at all (unigram), and which tokens followed each
context of the last 1, 2 and 4 tokens (``CONTEXTS``: bigram, trigram,
5-gram), counted over the tokens of the block coded so far.  A block's
streams (``segments.py``) advance in lockstep, so at step ``s`` the counts
hold the first ``s`` tokens of every stream of the block, as in ``match.py``.

The coded table is the linear mixture ``w0 * model + w1 * unigram + w2 *
bigram + ...`` of the model's table and each cache's relative counts (a cache
with no counts for the current context gives its weight to the model).  Each
stream learns its weights as it goes, moving them a step towards each
component's share of the probability the coded token got (online EM;
``RATE``), so a model that already knows the data keeps nearly all the
weight, and one that does not hands it to the caches.  Weights, contexts and
rate were chosen on held-back training text (docs/ARCHITECTURE.md, "N-gram
caches").

Everything is integer arithmetic on the exact tables, so the encoder and the
decoder compute the same tables (``mixer.Mixer`` drives both).
"""
from __future__ import annotations

import numpy as np

from ..model.intformat import FREQ_BITS

ONE = 1 << 16                      # weights are fixed point: ONE is probability 1
CONTEXTS = (1, 2, 4)               # contexts of the caches besides the unigram one
START = 6554                       # each cache's first weight, 0.1
FLOOR = 64                         # no weight falls below 1/1024
RATE = 5                           # weights move 1/32 of the way per token
DENSE = 24                         # a context with more followers counts them in an array


Followers = dict[int, int] | np.ndarray


class NGramGroup:
    """The n-gram counts of one block's streams and each stream's weights.

    Per step: ``mix(tables, ids)`` for the streams active at this step (rows
    of *tables* in the order of *ids*), then ``learn(ids, tables, syms)``
    with the tables passed to ``mix`` and the coded tokens; the counts see
    this step's tokens from the next step on.  Column 0 of the weights and
    counts is the unigram cache, column 1 + j the cache of ``CONTEXTS[j]``."""

    def __init__(self, n_streams: int, vocab: int) -> None:
        self.total = (1 << FREQ_BITS) - vocab     # each table row sums to this
        self.vocab = vocab
        self.uni = np.zeros(vocab, dtype=np.int64)
        self.n = 0
        # per context length: context -> [times seen, counts of the tokens that followed
        # ({token: count}, or an array over the vocabulary once there are more than DENSE)]
        self.follow: list[dict[tuple[int, ...], list]] = [{} for _ in CONTEXTS]
        self.prev: list[tuple[int, ...]] = [() for _ in range(n_streams)]
        self.weights = np.full((n_streams, 1 + len(CONTEXTS)), START, dtype=np.int64)
        self._pending: list[tuple[int, int]] = []
        self._step: tuple[list[list[Followers | None]], np.ndarray, np.ndarray] | None = None

    def _flush(self) -> None:
        """Count the tokens of the previous step (lockstep visibility)."""
        for i, tok in self._pending:
            p = self.prev[i]
            for k, follow in zip(CONTEXTS, self.follow):
                if len(p) >= k:
                    entry = follow.get(p[-k:])
                    if entry is None:
                        follow[p[-k:]] = [1, {tok: 1}]
                        continue
                    entry[0] += 1
                    d = entry[1]
                    if type(d) is dict:
                        d[tok] = d.get(tok, 0) + 1
                        if len(d) > DENSE:
                            entry[1] = np.zeros(self.vocab, dtype=np.int64)
                            entry[1][list(d)] = list(d.values())
                    else:
                        d[tok] += 1
            self.prev[i] = (p + (tok,))[-CONTEXTS[-1]:]
            self.uni[tok] += 1
        self.n += len(self._pending)
        self._pending = []

    def mix(self, tables: np.ndarray, ids: list[int]) -> np.ndarray:
        """The mixed tables (int64 [rows, V], each row summing to the same
        total) of the streams *ids* at this step, from their model tables."""
        self._flush()
        rows = len(ids)
        counts = np.zeros((rows, 1 + len(CONTEXTS)), dtype=np.int64)
        counts[:, 0] = self.n
        dicts: list[list[Followers | None]] = []
        for row, i in enumerate(ids):
            p, found = self.prev[i], []
            for j, (k, follow) in enumerate(zip(CONTEXTS, self.follow)):
                entry = follow.get(p[-k:]) if len(p) >= k else None
                if entry is None:
                    found.append(None)
                else:
                    counts[row, 1 + j] = entry[0]
                    found.append(entry[1])
            dicts.append(found)
        weights = np.where(counts > 0, self.weights[ids], 0)   # a cache with no counts: 0
        w0 = ONE - weights.sum(1)                              # ... its weight is the model's
        coef = weights * self.total // np.maximum(counts, 1)   # count * coef <= w * total
        g = (tables * w0[:, None]) >> 16
        g += (self.uni[None, :] * coef[:, :1]) >> 16
        at, val = [], []
        dense: list[list[int]] = [[] for _ in CONTEXTS]
        for row, found in enumerate(dicts):
            for j, d in enumerate(found):
                if type(d) is dict:
                    at.extend(row * self.vocab + t for t in d)
                    c = int(coef[row, 1 + j])
                    val.extend((n * c) >> 16 for n in d.values())
                elif d is not None:
                    dense[j].append(row)
        for j, rs in enumerate(dense):      # each row once per context length
            if rs:
                g[rs] += (np.stack([dicts[r][j] for r in rs]) * coef[rs, 1 + j, None]) >> 16
        if at:
            np.add.at(g.reshape(-1), np.array(at), np.array(val, dtype=np.int64))
        top = g.argmax(1)
        g[np.arange(rows), top] += self.total - g.sum(1)
        self._step = dicts, counts, weights
        return g

    def learn(self, ids: list[int], tables: np.ndarray, syms: list[int]) -> None:
        """Move each stream's weights towards the components' shares of the
        probability its coded token got; queue the tokens to be counted."""
        dicts, counts, weights = self._step
        hits = np.zeros_like(counts)
        hits[:, 0] = self.uni[syms]
        for row, (found, sym) in enumerate(zip(dicts, syms)):
            for j, d in enumerate(found):
                if type(d) is dict:
                    hits[row, 1 + j] = d.get(sym, 0)
                elif d is not None:
                    hits[row, 1 + j] = d[sym]
        shares = weights * (hits * self.total // np.maximum(counts, 1))
        q = (ONE - weights.sum(1)) * tables[np.arange(len(ids)), syms] + shares.sum(1)
        on = (q > 0)[:, None] & (counts > 0)
        step = (((shares << 16) // np.maximum(q, 1)[:, None]) - weights) >> RATE
        w = np.where(on, np.maximum(FLOOR, self.weights[ids] + step), self.weights[ids])
        caches = w.sum(1, keepdims=True)
        w = np.where(caches > ONE - FLOOR, w * (ONE - FLOOR) // caches, w)   # the model keeps FLOOR
        self.weights[ids] = w
        self._pending += zip(ids, syms)
