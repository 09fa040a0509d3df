"""The tables a block's streams are coded with, step by step.

A block's streams advance in lockstep, one token each per step.  At every
step the model's exact tables are mixed with what the block itself has shown
so far: the match model (``match.py``, frame version 3) and the n-gram caches
(``ngram.py``, version 4).  The encoder and the decoder drive one ``Mixer``
per block the same way -- ``tables`` with the model's rows, then ``learn``
with the coded tokens -- so they code with the same integers by construction.

``new_mixer`` gives the native core's mixer (``model/_mix.c``, the same
integers without Python per token) where the core is built; the classes here
are the reference it is tested against, and the fallback without it.
"""
from __future__ import annotations

import numpy as np

from ..model import native
from .frame import MATCH, MODEL_ALONE, NGRAMS
from .match import Confidence, MatchGroup, mix
from .ngram import NGramGroup


class Mixer:
    """The mixing state of one block's streams (``version`` says which
    components; ``MODEL_ALONE`` codes with the model's tables unchanged)."""

    def __init__(self, n_streams: int, version: int, vocab: int) -> None:
        if version not in (MODEL_ALONE, MATCH, NGRAMS):
            raise ValueError(f"unknown llm payload version {version}")
        self.match = MatchGroup(n_streams) if version >= MATCH else None
        self.conf = [Confidence() for _ in range(n_streams)] if self.match is not None else []
        self.ngram = NGramGroup(n_streams, vocab) if version >= NGRAMS else None
        self._guess: list[tuple[int, int] | None] = []
        self._matched = np.empty(0)

    def tables(self, freqs: np.ndarray, ids: list[int]) -> np.ndarray:
        """The tables (int64 [rows, V]) to code this step's tokens of streams
        *ids* with, from the model's rows *freqs* (in the order of *ids*;
        changed in place).  Every stream still going must be in *ids*."""
        if self.match is not None:
            preds = self.match.predictions()
            self._guess = [preds[i] for i in ids]
            rows, syms, probs = [], [], []
            for row, (i, guess) in enumerate(zip(ids, self._guess)):
                if guess is not None:
                    rows.append(row)
                    syms.append(guess[0])
                    probs.append(self.conf[i].prob(guess[1], int(freqs[row, guess[0]])))
            mix(freqs, rows, syms, probs)
        if self.ngram is not None:
            self._matched = freqs
            freqs = self.ngram.mix(freqs, ids)
        return freqs

    def learn(self, ids: list[int], syms: list[int]) -> None:
        """The tokens coded at this step (the same *ids* as ``tables``)."""
        if self.match is not None:
            for i, guess, sym in zip(ids, self._guess, syms):
                if guess is not None:
                    self.conf[i].learn(sym == guess[0])
                self.match.append(i, sym)
        if self.ngram is not None:
            self.ngram.learn(ids, self._matched, syms)

    def run(self, freqs: np.ndarray, tokens: np.ndarray, lens: np.ndarray, start: int,
            alone: Stats, mixed: Stats) -> None:
        """Positions ``start`` .. ``start + n`` of every stream still going
        there, as the encoder steps them: the coder's statistics (``symbol_stats``)
        of each stream's token with the model's table (into *alone*
        [B, L, 3]) and with the mixed one (*mixed*), then ``learn``.
        *freqs* [B, n, V] are the model's tables, *tokens* [B, L] the streams'
        tokens (*lens* [B] of each), all int64."""
        for s in range(start, start + freqs.shape[1]):
            act = np.nonzero(lens > s)[0].tolist()
            syms = tokens[act, s]
            rows = freqs[act, s - start]
            alone[act, s] = symbol_stats(rows, syms)
            mixed[act, s] = symbol_stats(self.tables(rows.copy(), act), syms)
            self.learn(act, syms.tolist())


def new_mixer(n_streams: int, version: int, vocab: int) -> Mixer:
    """A mixer for one block's streams: the native core's where it is built
    (same interface and integers), else ``Mixer``."""
    if native.available():
        return native.mixer(n_streams, version, vocab)
    return Mixer(n_streams, version, vocab)


Stats = np.ndarray   # [..., 3] int64: symbol, cumulative frequency before it, frequency


def symbol_stats(tables: np.ndarray, syms: np.ndarray) -> Stats:
    """What the coder needs of each row's symbol in integer tables [n, V]:
    (symbol, sum of the entries before it, its entry), in the coder's units
    (constriction gives each entry f + 1)."""
    n, vocab = tables.shape
    fs = tables[np.arange(n), syms]
    lo = np.where(np.arange(vocab) < syms[:, None], tables, 0).sum(1) + syms
    return np.stack([syms, lo, fs], 1)
