"""The tables a block's streams are coded with, step by step.

A block's streams advance in lockstep, one token each per step.  At every
step the model's exact tables are mixed with what the block itself has shown
so far: the match model (``match.py``, frame version 3) and the n-gram caches
(``ngram.py``, version 4).  The encoder and the decoder drive one ``Mixer``
per block the same way -- ``tables`` with the model's rows, then ``learn``
with the coded tokens -- so they code with the same integers by construction.
"""
from __future__ import annotations

import numpy as np

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
