"""Process pool for the llm codec: one engine per worker process.

Blocks are spread over the workers, one thread each; two single-thread
processes were measured 1.3-2.4x faster than one two-thread torch process
(shared/MEASUREMENTS.md).  A decode job that finds cores idle (a lone cold
read) also runs the native core's helper threads on them, which split its
block's streams.  Results do not change: the engine is exact whatever the
process or thread count.

A worker that dies (killed, out of memory) breaks a ProcessPoolExecutor for
good; the pool then starts fresh workers and runs the batch once more, so
reads heal without a remount.  A batch that kills its workers twice raises
:class:`WorkerError`.  A worker whose parent dies exits by itself.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, TypeVar

from ..model import ModelFile
from .frame import MODEL_ALONE
from .segments import Coded, join_segments, regroup, split_segments

if TYPE_CHECKING:
    from .llm import LLMCodec

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
_CORES = len(os.sched_getaffinity(0))
# Threads one decode job may take: a 64 KiB block is ~14 streams, split two per
# thread, and idle helpers still watch for each step for a moment (measured here on
# two cores only; more threads than this would mostly watch).
_MAX_THREADS = 4
_codec: LLMCodec | None = None
_busy = None        # in a worker: the pool's count of decode jobs under way (shared)


class WorkerError(RuntimeError):
    """A batch the model workers could not finish (they died on it twice)."""


def _exit_with(parent: int) -> None:
    """Ends this worker once the process that started it is gone: a daemon
    killed (kill -9, out of memory) cannot stop its workers, and they would
    otherwise wait on their job queue for good, each holding its model."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _init(model_bytes: bytes, busy) -> None:
    """Runs in each worker: only workers build the engine.  With the native
    core they never import torch; a torch engine (strong tier, or no core)
    runs single-threaded."""
    global _codec, _busy
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True,
                     name="llmfs-orphan-watch").start()
    os.environ["OMP_NUM_THREADS"] = "1"     # read when torch is first imported
    from ..model.modelfile import LanguageModel
    from .llm import LLMCodec

    _codec = LLMCodec(LanguageModel.from_bytes(model_bytes))
    _busy = busy


def _encode(job: tuple[bytes, float]) -> Coded | None:
    from ..model import native

    native.threads(1)       # the compactor's CPU share counts one core per worker
    return _codec.encode(*job)


def _ready(_: object) -> bool:
    """A job that only makes its worker start (and load the model)."""
    return _codec is not None


def _decode(items: list[Coded]) -> list[list[int] | None]:
    """A read waits on this: the block's streams are split over the cores
    that the pool's other decode jobs leave idle (a lone cold read on two
    cores decodes ~1.6x faster; same integers)."""
    from ..model import native

    with _busy.get_lock():
        _busy.value += 1
        running = _busy.value
    try:
        native.threads(max(1, min(_MAX_THREADS, _CORES // running)))
        return _codec.decode_many(items)
    finally:
        with _busy.get_lock():
            _busy.value -= 1


def _terminate(table: dict, done: list) -> list:
    """SIGTERM every worker process in *table* (an executor's process table)
    not in *done*; returns *done* with them."""
    for p in list(table.values()):
        if p not in done:
            p.terminate()
            done.append(p)
    return done


class LLMPool:
    """Same interface as LLMCodec.encode / decode_many, spread over processes."""

    def __init__(self, model: ModelFile, workers: int) -> None:
        """*model*: a ModelFile or a LanguageModel (only its file and tokenizer are used here)."""
        self.model = model
        self.workers = workers
        self.restarts = 0
        self._closed = False
        self._lock = threading.Lock()
        self._ex = self._start()

    def _start(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init,
                                   initargs=(self.model.data, ctx.Value("i", 0)))

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """``map`` over the workers; a dead worker restarts the pool and the
        batch runs once more (the engine is exact, so a rerun gives the same)."""
        for attempt in (1, 2):
            with self._lock:
                ex = self._ex
            try:
                return list(ex.map(fn, items))
            except BrokenProcessPool as e:
                with self._lock:
                    if self._closed:
                        raise WorkerError("model workers stopped (pool closed)") from e
                    if self._ex is ex:   # the first caller to notice restarts it
                        ex.shutdown(wait=False, cancel_futures=True)
                        self._ex = self._start()
                        self.restarts += 1
                        log.warning("a model worker died (%s); started new workers", e)
                if attempt == 2:
                    raise WorkerError("model workers died twice on one batch") from e
        raise AssertionError("unreachable")

    def start(self) -> None:
        """Start every worker now (each loads the model) instead of at the
        first job, so that job does not wait for it."""
        self._map(_ready, [None] * self.workers)

    def encode_many(self, jobs: list[tuple[bytes, float]]) -> list[Coded | None]:
        return self._map(_encode, jobs)

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
        for g, res in zip(groups, self._map(_decode, [[items[i] for i in g] for g in groups])):
            for i, r in zip(g, res):
                out[i] = r
        return out

    def close(self, abort: bool = False) -> None:
        """Stop the workers; with *abort* at once, so a batch under way fails
        with WorkerError instead of finishing (an unmount mid-compaction)."""
        with self._lock:
            self._closed = True
            ex = self._ex
        if not abort:
            ex.shutdown(wait=True)
            return
        # ProcessPoolExecutor has no public way to stop running work before 3.14.  Never
        # wait on the executor here: a worker spawned by a batch racing this call can sit
        # in its start-up for good, and an unmount must not hang on it (seen once: the
        # daemon stopped while the compactor started a pool for a newly learnt model).
        table = getattr(ex, "_processes", None) or {}   # shutdown drops the executor's reference
        procs = _terminate(table, [])
        ex.shutdown(wait=False, cancel_futures=True)     # waits for a submit spawning workers
        procs = _terminate(table, procs)                 # ... so this sees what it spawned
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
