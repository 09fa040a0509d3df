"""Store dictionaries: shared history for small files.

Each small file is its own frame, with no history before its first byte: a
directory of C headers compresses far worse one file at a time than as one
stream (squashfs packs small files into shared 1 MiB fragments).  zstd's own
trainer turns a sample of a store's small blocks into a dictionary (the
substrings they share); fresh writes of small blocks and the compactor's zstd
fallback then code with it, and each frame names the dictionary it needs, so
it still decodes on its own given the store.  The sample is the small blocks
the model lost on: the model codes small text better than zstd with a
dictionary (1 MiB of Linux headers: 202 KB against 252 KB, the dictionary
included), so only what stays model-free after compaction gains for good.

A dictionary is kept only when it codes a held-back tenth of the sample at
least ``MIN_GAIN`` smaller at zstd -19 and that saving, projected over the
whole sample, is at least ``PAYBACK`` times the dictionary's own stored size,
so a store of unrelated or few small files does not carry one for nothing.  Dictionaries are content-addressed and kept
in the store (``dicts``, zstd-compressed, like models); ``llmfs stats`` counts
their bytes.
"""
from __future__ import annotations

import logging
import random

import zstandard

from .store import Store

log = logging.getLogger(__name__)

DICT_BYTES = 32 << 10       # dictionary size: zstd's own default is 110 KiB, tuned for
                            # many more samples than a small store has
MIN_SAMPLES = 64            # fewer small blocks than this: no dictionary
MAX_SAMPLE_BYTES = 4 << 20  # the sample the trainer sees
MIN_GAIN = 0.10             # kept only if it codes held-back blocks this much smaller
PAYBACK = 2                 # ... and saves this many times its own size on the sample


def train(samples: list[bytes]) -> bytes | None:
    """A dictionary for blocks like *samples*, or None when there are too
    few or it does not pay (``MIN_GAIN`` on every tenth sample, held back)."""
    if len(samples) < MIN_SAMPLES:
        return None
    order = list(samples)
    random.Random(0).shuffle(order)
    held, fit = order[::10], [s for i, s in enumerate(order) if i % 10]
    try:
        d = zstandard.train_dictionary(DICT_BYTES, fit, level=19)
    except zstandard.ZstdError as e:    # too little or too uniform data to find substrings
        log.info("no dictionary: %s", e)
        return None
    with_d = zstandard.ZstdCompressor(level=19, dict_data=d, write_dict_id=False)
    plain = zstandard.ZstdCompressor(level=19)
    size_d = sum(len(with_d.compress(s)) + 8 for s in held)   # + the id in each frame
    size = sum(len(plain.compress(s)) for s in held)
    stored = len(plain.compress(d.as_bytes()))
    saved = (size - size_d) * len(order) / len(held)
    log.info("dictionary of %d bytes (%d stored) from %d small blocks: held-back %d -> %d "
             "bytes", len(d.as_bytes()), stored, len(fit), size, size_d)
    return d.as_bytes() if size_d <= (1 - MIN_GAIN) * size and saved >= PAYBACK * stored \
        else None


class Sampler:
    """Small blocks (shorter than the store's block size: small files and
    file tails) the model did not win on, as the compactor meets them, until
    the store has a dictionary: those are the blocks a dictionary can still
    shrink once the compactor is done (the model codes the rest)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.samples: dict[bytes, bytes] = {}     # block key -> bytes
        self._bytes = 0
        self._tried_at = 0         # sample count of the last training that did not pay

    def offer(self, blocks: dict[bytes, bytes]) -> None:
        """Blocks (key -> bytes) the compactor kept in a model-free frame."""
        if self.store.dictionary is not None:
            return
        for key, raw in blocks.items():
            if 0 < len(raw) < self.store.block_size and self._bytes < MAX_SAMPLE_BYTES \
                    and key not in self.samples:
                self.samples[key] = raw
                self._bytes += len(raw)

    def due(self) -> bool:
        """No dictionary yet, and enough new samples since the last try."""
        return self.store.dictionary is None and len(self.samples) >= max(
            MIN_SAMPLES, 2 * self._tried_at)

    def train(self) -> list[bytes]:
        """Train on the sample and keep the dictionary in the store if it
        pays; returns the keys of the sampled blocks, to be coded again with
        it (none when it did not pay)."""
        d = train(list(self.samples.values()))
        if d is None:
            self._tried_at = len(self.samples)
            return []
        did = self.store.add_dictionary(d)
        log.info("store dictionary %s registered (%d bytes, %d samples)", did.hex(), len(d),
                 len(self.samples))
        keys = list(self.samples)
        self.samples, self._bytes = {}, 0
        return keys
