"""Compaction farmed out to a Ray cluster.

The model is the expensive part of llmfs, and its engine is exact integer
arithmetic: a frame encoded on any worker, CPU or GPU, decodes bit for bit on
the machine that serves the mount.  That is what makes farming the encoding
out safe.  ``ClusterCodec`` stands in for a ``BlockCodec`` in ``recompress``
(the compactor and ``llmfs compact``): blocks are read and frames swapped
locally exactly as always (only if smaller, refcounts, marks, the resumable
cursor), and only ``encode_blocks`` runs remotely, by the same policy code.

* The store's model files go into Ray's object store once (``ray.put``);
  each task gets a reference, and each worker process builds its codec once
  and keeps it for the tasks that follow.
* At most ``inflight`` tasks of ``task_blocks`` blocks are out at a time, so
  a slow worker delays and never piles work up; a task whose worker dies is
  run again by Ray (``max_retries``), and one that still fails leaves its
  blocks as they were (tried again in a later round).
* Trust: every returned frame must name the block's checksum, model-free
  frames are decoded here, and llm frames too (all of them by default;
  ``verify`` < 1 checks that share, chosen by block hash).  A frame that does
  not give the block back drops every frame of its task, with a log line
  naming the worker.

Only the block bytes of a task and its frames cross the network, plus the
model files once per node.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections import Counter

from .codec.frame import Codec, Frame, FrameError, checksum
from .codec.plain import add_dictionary, decode_plain, dictionary_data
from .codec.policy import BlockCodec, Policy

log = logging.getLogger(__name__)

HINT = "--cluster needs Ray: pip install 'llmfs[cluster]'"
TASK_BLOCKS = 4          # blocks per task: a few seconds of model time each


class ClusterError(RuntimeError):
    """The cluster cannot be used as asked; the message is meant for the admin."""


def available() -> bool:
    """Whether Ray can be imported here."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def connect(address: str) -> None:
    """Join the Ray cluster at *address*; ``local`` or ``local:N`` starts a
    Ray instance on this machine (with N CPUs) for the life of this process."""
    try:
        import ray
    except ImportError:
        raise ClusterError(HINT) from None
    if ray.is_initialized():
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address == "local" or address.startswith("local:"):
            cpus = int(address.split(":")[1]) if ":" in address else None
            ray.init(num_cpus=cpus, **quiet)
        else:
            ray.init(address=address, **{k: v for k, v in quiet.items()
                                          if k != "include_dashboard"})
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {e}") from None


_WORKER_CODECS: dict[tuple, BlockCodec] = {}   # in each worker process, built once


def encode_task(models: list[bytes], encoders: int, device: str, blocks: list[bytes],
                dictionary: tuple[bytes, bytes] | None,
                policy: Policy = Policy()) -> tuple[str, list[bytes]]:
    """Runs on a worker: the frames of *blocks* by the policy local compaction
    uses, and who made them (host:pid, for the log when they are refused)."""
    key = (tuple(hashlib.blake2b(m, digest_size=8).digest() for m in models), encoders, device,
           policy)
    codec = _WORKER_CODECS.get(key)
    if codec is None:
        if device == "cpu":
            codec = BlockCodec.from_model_files(models, 0, encoders, policy)
        else:
            from .model.modelfile import LanguageModel

            loaded = [LanguageModel.from_bytes(m, device) for m in models]
            codec = BlockCodec(loaded[0], policy, extra_models=tuple(loaded[1:]),
                               encoders=encoders)
        _WORKER_CODECS[key] = codec
    did = None
    if dictionary is not None:
        did = add_dictionary(dictionary[1])
    return f"{socket.gethostname()}:{os.getpid()}", codec.encode_blocks(blocks, did)


class ClusterCodec:
    """Encodes on a Ray cluster, decodes and verifies here; the interface of
    ``BlockCodec`` that ``recompress`` uses.  A block whose task failed gets
    None instead of a frame (``recompress`` leaves it as it was)."""

    def __init__(self, local: BlockCodec, model_files: list[bytes], encoders: int, address: str,
                 device: str = "cpu", verify: float = 1.0, task_blocks: int = TASK_BLOCKS,
                 inflight: int | None = None) -> None:
        connect(address)
        import ray

        self.local = local
        self.encoders = local.encoders
        self.encoder_tag = local.encoder_tag
        self.counters: Counter[str] = local.counters
        self.device, self.verify, self.task_blocks = device, verify, task_blocks
        self._encoders = encoders
        self._models = ray.put(model_files)    # once; every task gets the reference
        gpu = device != "cpu"
        self._task = ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0,
                                max_retries=3)(encode_task)
        capacity = ray.cluster_resources().get("GPU" if gpu else "CPU", 1)
        self.inflight = inflight or max(1, int(capacity))

    def decode_each(self, frames: list[bytes]) -> list[bytes | FrameError]:
        return self.local.decode_each(frames)

    def close(self, abort: bool = False) -> None:
        self.local.close(abort)

    def __enter__(self) -> "ClusterCodec":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encode_blocks(self, blocks: list[bytes],
                      dictionary: bytes | None = None) -> list[bytes | None]:
        """Frames for *blocks* from the cluster, each verified; None for the
        blocks of a task that failed or was refused."""
        import ray

        d = None if dictionary is None else (dictionary, dictionary_data(dictionary))
        out: list[bytes | None] = [None] * len(blocks)
        todo = [range(i, min(i + self.task_blocks, len(blocks)))
                for i in range(0, len(blocks), self.task_blocks)]
        pending: dict = {}
        while todo or pending:
            while todo and len(pending) < self.inflight:
                part = todo.pop(0)
                ref = self._task.remote(self._models, self._encoders, self.device,
                                        [blocks[i] for i in part], d, self.local.policy)
                pending[ref] = part
            done, _ = ray.wait(list(pending), num_returns=1)
            part = pending.pop(done[0])
            try:
                worker, frames = ray.get(done[0])
            except Exception as e:    # retried by Ray and failed again: these blocks wait
                log.warning("cluster task of %d blocks failed: %s", len(part), e)
                self.counters["cluster_failed_blocks"] += len(part)
                continue
            mine = [blocks[i] for i in part]
            why = self._check(mine, frames)
            if why is not None:
                log.error("worker %s returned a frame that %s: its %d frames dropped",
                          worker, why, len(part))
                self.counters["cluster_refused_blocks"] += len(part)
                continue
            for i, f in zip(part, frames):
                out[i] = f
        return out

    def _check(self, blocks: list[bytes], frames: list[bytes]) -> str | None:
        """Why *frames* cannot be trusted as the frames of *blocks*, or None."""
        if len(frames) != len(blocks):
            return "does not match the task (wrong count)"
        llm = []
        for raw, f in zip(blocks, frames):
            try:
                head = Frame.unpack(f)
            except FrameError as e:
                return f"does not parse ({e})"
            if head.digest != checksum(raw) or head.raw_len != len(raw):
                return "names another block"
            if head.codec == Codec.LLM:
                if _sampled(raw, self.verify):
                    llm.append((raw, f))
            elif decode_plain(f) != raw:
                return "does not decode to the block"
        for (raw, _), got in zip(llm, self.local.decode_each([f for _, f in llm])):
            if got != raw:
                return "does not decode to the block"
        self.counters["cluster_verified_llm"] += len(llm)
        return None


_SAMPLE_KEY = os.urandom(16)   # this process's: a worker cannot tell which frames are checked


def _sampled(raw: bytes, share: float) -> bool:
    """Whether the llm frame of block *raw* is decoded here (a share of them,
    chosen by a keyed hash of the content)."""
    if share >= 1:
        return True
    h = int.from_bytes(hashlib.blake2b(raw, digest_size=8, key=_SAMPLE_KEY).digest(), "big")
    return h < share * (1 << 64)
