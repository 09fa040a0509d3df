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
from .segments import decode_segmented

if TYPE_CHECKING:
    from .llm import Encoded, LLMCodec

_codec: LLMCodec | None = None


def _init(model_bytes: bytes) -> None:
    """Runs in each worker: only workers import torch and build the engine."""
    global _codec
    import torch

    from ..model.modelfile import LanguageModel
    from .llm import LLMCodec

    torch.set_num_threads(1)
    _codec = LLMCodec(LanguageModel.from_bytes(model_bytes))


def _encode(job: tuple[bytes, float]) -> Encoded | None:
    return _codec.encode(*job)


def _decode(items: list[tuple[bytes, int]]) -> list[list[int] | None]:
    return _codec.decode_streams(items)


class LLMPool:
    """Same interface as LLMCodec.encode / decode_many, spread over processes."""

    def __init__(self, model: ModelFile, workers: int) -> None:
        """*model*: a ModelFile or a LanguageModel (only its file and tokenizer are used here)."""
        self.model = model
        self.workers = workers
        self._ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init, initargs=(model.data,))

    def encode_many(self, jobs: list[tuple[bytes, float]]) -> list[Encoded | None]:
        return list(self._ex.map(_encode, jobs))

    def decode_many(self, items: list[tuple[bytes, int]]) -> list[list[int] | None]:
        """Segments of all items are spread over the workers, so even a single
        block decodes on every core."""
        return decode_segmented(items, self._decode_streams)

    def _decode_streams(self, items: list[tuple[bytes, int]]) -> list[list[int] | None]:
        # longest first, dealt round-robin, so each worker gets a similar share
        order = sorted(range(len(items)), key=lambda i: -items[i][1])
        groups = [order[w::self.workers] for w in range(self.workers)]
        groups = [g for g in groups if g]
        out: list[list[int] | None] = [None] * len(items)
        for g, res in zip(groups, self._ex.map(_decode, [[items[i] for i in g] for g in groups])):
            for i, r in zip(g, res):
                out[i] = r
        return out

    def close(self) -> None:
        self._ex.shutdown()
