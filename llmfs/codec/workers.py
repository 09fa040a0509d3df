"""Process pool for the llm codec: one single-threaded engine per core.

The engine's small matmuls and per-token Python work scale poorly across
threads of one process; two single-thread processes were measured 1.3-2.4x
faster than one two-thread process (shared/MEASUREMENTS.md).  Results do not
change: the engine is exact whatever the process or thread count.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from typing import TYPE_CHECKING

from ..model import ModelFile
from .frame import MODEL_ALONE
from .segments import Coded, join_segments, regroup, split_segments

if TYPE_CHECKING:
    from .llm import LLMCodec

_codec: LLMCodec | None = None


def _init(model_bytes: bytes) -> None:
    """Runs in each worker: only workers import torch and build the engine."""
    global _codec
    import torch

    from ..model.modelfile import LanguageModel
    from .llm import LLMCodec

    torch.set_num_threads(1)
    _codec = LLMCodec(LanguageModel.from_bytes(model_bytes))


def _encode(job: tuple[bytes, float]) -> Coded | None:
    return _codec.encode(*job)


def _decode(items: list[Coded]) -> list[list[int] | None]:
    return _codec.decode_many(items)


class LLMPool:
    """Same interface as LLMCodec.encode / decode_many, spread over processes."""

    def __init__(self, model: ModelFile, workers: int) -> None:
        """*model*: a ModelFile or a LanguageModel (only its file and tokenizer are used here)."""
        self.model = model
        self.workers = workers
        self._ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init, initargs=(model.data,))

    def encode_many(self, jobs: list[tuple[bytes, float]]) -> list[Coded | None]:
        return list(self._ex.map(_encode, jobs))

    def decode_many(self, items: list[Coded]) -> list[list[int] | None]:
        """Items are spread over the workers, largest first to the least
        loaded.  The streams of a block mixed with its own history decode in
        lockstep in one process (they share its history); those of a block
        coded with the model alone are independent and go out one by one, so
        even a single such block decodes on every core."""
        pieces: list[Coded] = []
        owner: list[int] = []
        for i, item in enumerate(items):
            streams = (split_segments(item.payload, item.n_tokens)
                       if item.version == MODEL_ALONE else None)
            if streams and len(streams) > 1:
                pieces += [Coded(join_segments([(p, n)]), n, MODEL_ALONE) for p, n in streams]
                owner += [i] * len(streams)
            else:
                pieces.append(item)
                owner.append(i)
        return regroup(owner, self._spread(pieces), len(items))

    def _spread(self, items: list[Coded]) -> list[list[int] | None]:
        """Decode *items* whole, largest first to the least loaded worker."""
        load = [0] * self.workers
        groups: list[list[int]] = [[] for _ in range(self.workers)]
        for i in sorted(range(len(items)), key=lambda i: -items[i].n_tokens):
            w = load.index(min(load))
            groups[w].append(i)
            load[w] += items[i].n_tokens
        groups = [g for g in groups if g]
        out: list[list[int] | None] = [None] * len(items)
        for g, res in zip(groups, self._ex.map(_decode, [[items[i] for i in g] for g in groups])):
            for i, r in zip(g, res):
                out[i] = r
        return out

    def close(self) -> None:
        self._ex.shutdown()
