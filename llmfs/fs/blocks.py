"""Turning stored frames into bytes for the filesystem: cache, batching,
and sharing of decodes already under way.

zstd and raw frames decode in the calling thread (microseconds).  llm frames
go to the model in one batch per call, in worker processes, so a decode never
holds the GIL the other FUSE threads need; a block another thread is already
decoding is waited for, not decoded twice.  Readahead decodes in a background
thread, after the block the reader asked for.  The model worker starts at
mount in the background (``decode_prestart``), or else on the first llm
frame; the daemon process itself never imports torch.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

from ..codec.frame import Codec, Frame, FrameError
from ..codec.plain import decode_plain, frame_codec
from ..store import Store
from .cache import BlockCache

log = logging.getLogger(__name__)


def is_llm(frame: bytes) -> bool:
    try:
        return frame_codec(frame) == Codec.LLM
    except FrameError:
        return False


class BlockReader:
    def __init__(self, store: Store, cache: BlockCache, workers: int) -> None:
        self.store = store
        self.cache = cache
        self.workers = workers
        self._llm = None   # BlockCodec, made on the first llm frame
        self._retired: list = []   # decoders replaced since (closed with this reader)
        self._lock = threading.Lock()
        self._inflight: dict[bytes, Future] = {}
        self.stats: Counter[str] = Counter()
        self._background = ThreadPoolExecutor(1, thread_name_prefix="llmfs-readahead")

    def _llm_codec(self, frames: list[bytes]):
        """The decoder, (re)made when a frame needs a model it lacks: the
        daemon's store learning may register one while the store is mounted."""
        need = {Frame.unpack(f).model for f in frames}
        with self._lock:
            if self._llm is not None and not need <= set(self._llm.llm):
                self._retired.append(self._llm)   # another thread may be decoding with it
                self._llm = None
                self.stats["llm_model_reloads"] += 1
            if self._llm is None:
                from ..codec.policy import BlockCodec   # imports torch
                models = list(self.store.read(lambda t: t.models()).values())
                self._llm = BlockCodec.from_model_files(models, self.workers)
            return self._llm

    def _claim(self, keys) -> tuple[dict[bytes, Future], dict[bytes, Future]]:
        """Split *keys* into blocks this caller decodes (registered as under
        way) and blocks another thread is already decoding."""
        mine: dict[bytes, Future] = {}
        theirs: dict[bytes, Future] = {}
        with self._lock:
            for key in keys:
                if key in self._inflight:
                    theirs[key] = self._inflight[key]
                else:
                    mine[key] = self._inflight[key] = Future()
        return mine, theirs

    def prestart(self) -> None:
        """Start the model worker in the background now (mount time), so the
        first cold read does not wait for it to start and load the model."""
        self._background.submit(self._prestart)

    def _prestart(self) -> None:
        try:
            self._llm_codec([]).start()
        except Exception as e:     # a read starts it again and reports what is wrong
            log.warning("could not start the model worker at mount: %s", e)

    def busy(self, key: bytes) -> bool:
        """Whether block *key* is being decoded right now."""
        with self._lock:
            return key in self._inflight

    def decode(self, frames: dict[bytes, bytes]) -> dict[bytes, bytes | FrameError]:
        """Decoded bytes (or the error) for each block key in *frames*."""
        mine, theirs = self._claim(frames)
        out = self._run(frames, mine)
        for k, fut in theirs.items():
            out[k] = fut.result()
        return out

    def prefetch(self, frames: dict[bytes, bytes]) -> None:
        """Decode *frames* into the cache in the background (readahead).  The
        blocks count as under way at once, so a reader arriving at one of them
        waits for this decode instead of starting its own."""
        mine, _ = self._claim(frames)
        if mine:
            with self._lock:
                self.stats["readahead_blocks"] += len(mine)
            self._background.submit(self._run, {k: frames[k] for k in mine}, mine)

    def _run(self, frames: dict[bytes, bytes], mine: dict[bytes, Future]
             ) -> dict[bytes, bytes | FrameError]:
        out: dict[bytes, bytes | FrameError] = {}
        try:
            keys = list(mine)
            plain = [k for k in keys if not is_llm(frames[k])]
            llm = [k for k in keys if is_llm(frames[k])]
            for k in plain:
                out[k] = decode_plain(frames[k])
            if llm:
                t0 = time.perf_counter()
                todo = [frames[k] for k in llm]
                out.update(zip(llm, self._llm_codec(todo).decode_each(todo)))
                with self._lock:
                    self.stats["llm_batches"] += 1
                    self.stats["llm_blocks_decoded"] += len(llm)
                    self.stats["llm_decode_ms"] += int(1000 * (time.perf_counter() - t0))
            with self._lock:
                self.stats["plain_blocks_decoded"] += len(plain)
            for k in keys:
                if not isinstance(out[k], FrameError):
                    self.cache.put(k, out[k], expensive=k in llm)
        except BaseException as e:  # never leave waiters hanging
            for fut in mine.values():
                fut.set_exception(e)
            raise
        finally:
            with self._lock:
                for k in mine:
                    self._inflight.pop(k, None)
            for k, fut in mine.items():
                if not fut.done():
                    fut.set_result(out.get(k, FrameError("not decoded")))
        return out

    def close(self) -> None:
        self._background.shutdown(cancel_futures=True)
        for codec in [self._llm, *self._retired]:
            if codec is not None:
                codec.close()
