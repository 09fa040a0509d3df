"""Re-encoding stored blocks with the language model.

``Compactor`` runs inside the mount daemon; ``llmfs compact`` runs offline.
Both use ``recompress``: it encodes a batch of blocks with the store's model (the codec
verifies every llm frame by decoding it), then swaps each frame in one
write transaction only if the new one is smaller and the block is still
stored.  Where the model loses, the policy's zstd -19 frame usually still
beats the fast level of fresh writes and is swapped in; such blocks are
marked so they are not tried again until the encoding models change.
Blocks are content-addressed, so "still stored under this key" means
"unchanged": a concurrent overwrite makes a new key and never loses to a
stale frame.  Both also re-code llm blocks written in an older frame format
(decoding each first; the daemon unless ``compact_upgrade = false``,
``llmfs compact`` with ``--upgrade``), when a newer format mixes the model
with more of the block's own history, and llm blocks of another model than
the preferred encoder (the store learnt a better one, ``learner.py``).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from .codec.frame import VERSION, Codec, Frame, FrameError, Head
from .codec.plain import decode_plain, frame_codec
from .cluster import ClusterCodec
from .codec.policy import BlockCodec, Policy, encoder_tag
from .config import Config
from .dictionaries import Sampler
from .learner import Learner
from .model import model_id
from .store import Store, Txn
from .store.schema import ref_tried, unpack_ref


log = logging.getLogger(__name__)

LEARN_SLICE_S = 10.0   # store learning runs this long per compactor round, then paces


def outdated_llm(head: Head, first: bytes | None = None) -> bool:
    """Whether a parsed frame is llm in an older format than encoders write,
    or (given *first*, the preferred encoding model's short id) of another
    model: one the store learnt since may code it smaller."""
    return head.codec == Codec.LLM and (
        head.version < VERSION or (first is not None and head.model != first))


def wanted(head: Head, upgrade: bool, first: bytes | None = None) -> bool:
    """Whether compaction re-codes a block with this parsed frame: any but
    raw and llm (a fallback frame is tried again when the encoding models
    change), and with *upgrade* llm of an older format or another model than
    *first*."""
    return head.codec not in (Codec.RAW, Codec.LLM) or (upgrade and outdated_llm(head, first))


def recompress(store: Store, codec: BlockCodec | ClusterCodec, keys: list[bytes],
               lock: threading.RLock | None = None, upgrade: bool = False,
               seen: Callable[[list[bytes]], None] | None = None,
               lost: Callable[[dict[bytes, bytes]], None] | None = None,
               tag: bytes | None = None) -> Counter[str]:
    """Try to store blocks *keys* as llm frames; returns counts of what happened.
    *lock* is held around the swap transaction (the daemon's state mutex).
    llm blocks are skipped, except with *upgrade* those of an older format,
    which are decoded and coded again.  *seen* gets the bytes of the blocks
    tried (the store learner's sample), *lost* those (by key) the model did
    not win (the dictionary's sample).  Blocks no encoding shrank are marked
    with *tag* (default: the codec's encoding models)."""
    tag = codec.encoder_tag if tag is None else tag
    stats: Counter[str] = Counter()
    first = codec.encoders[0] if codec.encoders else None
    frames = store.read(lambda t: {k: t.frame(k) for k in keys})
    raws: dict[bytes, bytes | FrameError] = {}
    old_llm: list[bytes] = []
    for k, f in frames.items():
        head = None if f is None else Frame.unpack(f).head
        if head is None:
            stats["gone"] += 1         # deleted or overwritten before the round read it
        elif head.codec == Codec.LLM and not wanted(head, upgrade, first):
            stats["skipped"] += 1
        elif head.codec == Codec.LLM:
            old_llm.append(k)
        else:
            raws[k] = decode_plain(f)
    raws.update(zip(old_llm, codec.decode_each([frames[k] for k in old_llm])))
    for k in [k for k, raw in raws.items() if not isinstance(raw, bytes)]:
        del raws[k]
        stats["unreadable"] += 1
    order = list(raws)
    if seen is not None:
        seen([raws[k] for k in order])
    new = dict(zip(order, codec.encode_blocks([raws[k] for k in order], store.dictionary)))
    if lost is not None:
        lost({k: raws[k] for k in order
              if new[k] is not None and frame_codec(new[k]) != Codec.LLM})

    def swap(t: Txn) -> None:
        for k in order:
            old = t.frame(k)
            if new[k] is None:        # its cluster task failed: as it was, tried again later
                stats["unencoded"] += 1
            elif old is None:
                stats["gone"] += 1
            elif len(new[k]) < len(old):
                t.replace_frame(k, new[k])
                stats["saved_bytes"] += len(old) - len(new[k])
                head = Frame.unpack(new[k]).head
                if outdated_llm(head, first):   # the model alone or an older model won:
                    # upgrading would code it so again
                    t.mark_tried(k, tag)
                if frame_codec(old) == Codec.LLM:
                    stats["upgraded"] += 1
                elif head.codec == Codec.LLM:
                    stats["llm"] += 1
                else:      # the model lost, but a fallback beat the fast write level
                    stats["fallback"] += 1
                    t.mark_tried(k, tag)
            else:
                t.mark_tried(k, tag)   # not again with these models
                stats["kept"] += 1
    with lock or contextlib.nullcontext():
        store.write(swap)
    stats["verify_failures"] = codec.counters["verify_failures"]
    return stats


def policy_of(config: Config) -> Policy:
    """The codec policy a store's compaction runs with (its settings)."""
    return Policy(use_zpaq=config.compact_zpaq)


def recompress_plain(store: Store, keys: list[bytes], tag: bytes,
                     lock: threading.RLock | None = None,
                     policy: Policy = Policy()) -> Counter[str]:
    """Code blocks *keys* again without the model (zstd with the store's new
    dictionary, LZMA, PPMd, ZPAQ), keeping a frame only if smaller; blocks stay
    marked with *tag*, the encoding models that already lost on them."""
    with BlockCodec(None, policy) as plain:
        return recompress(store, plain, keys, lock, tag=tag)


def cold_blocks(t: Txn, after: bytes, limit: int, older_than_ns: int, tag: bytes,
                upgrade: bool = False, first: bytes | None = None
                ) -> tuple[list[bytes], bytes, list[bytes]]:
    """Up to *limit* zstd blocks (with *upgrade*, also llm blocks of an older
    format) written before *older_than_ns* and not yet tried by the encoding
    models *tag*, walking the block keys upward from *after* (wrapping at the
    end), where to go on from, and the cold raw blocks met on the way that are
    not yet listed for packing (nothing to code: they only go into a pack)."""
    out: list[bytes] = []
    settled: list[bytes] = []
    pos = after
    for key, ref in t.scan_from("refs", after):
        pos = key
        if key == after:
            continue
        if unpack_ref(ref)[1] < older_than_ns and ref_tried(ref) != tag:
            head = t.frame_head(key)
            if head is not None and wanted(head, upgrade, first):
                out.append(key)
                if len(out) >= limit:
                    return out, pos, settled
            elif head is not None and head.codec == Codec.RAW and t.unlisted(key):
                settled.append(key)
    return out, b"", settled          # end of the keys: the next walk starts over


class Compactor:
    """The daemon's background compactor: every round it encodes a batch of
    cold blocks, swaps the smaller verified frames, remembers where it stopped
    (``meta compact_cursor``, so a restart resumes), and yields to
    foreground I/O and to its CPU share."""

    def __init__(self, store: Store, model_files: list[bytes], encoders: int,
                 lock: threading.RLock, config: Config, busy: Callable[[], bool]) -> None:
        self.store = store
        self._models(model_files, encoders)
        self.lock = lock
        self.config = config
        self.busy = busy                # True while foreground I/O is going on
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._codec: BlockCodec | ClusterCodec | None = None
        self.learner = Learner(store, config, self._stop, lock) if config.learn else None
        self.sampler = Sampler(store)
        self._thread = threading.Thread(target=self._loop, name="llmfs-compactor", daemon=True)

    def _models(self, model_files: list[bytes], encoders: int) -> None:
        self.model_files = model_files
        self.encoders = encoders        # the first *encoders* model files encode
        self.tag = encoder_tag([model_id(d)[:8] for d in model_files[:encoders]])
        self.first = model_id(model_files[0])[:8] if encoders else None

    def reload_models(self) -> None:
        """Take up the store's models as they are now (the learner registered
        one): a new encoder tag, so every cold block is tried again."""
        self._models(*self.store.read(lambda t: t.codec_models()))
        if self._codec is not None:
            self._codec.close()
            self._codec = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop at once: a round under way is abandoned before its swap (one
        transaction at its end), so nothing it did is half applied."""
        self._stop.set()
        codec = self._codec
        if codec is not None:
            codec.close(abort=True)
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.compact_interval_s):
            try:
                while not self._stop.is_set() and self.round():
                    pass
            except Exception:   # a failed round must not end compaction for good
                if self._stop.is_set():
                    log.info("compactor round abandoned: stopping")
                    return
                log.exception("compactor round failed; trying again later")

    def pack(self) -> None:
        """Pack the loose frames compaction is done with and rewrite a mostly
        dead pack (one short transaction: copying, no coding)."""
        with self.lock:
            moved, packed = self.store.write(lambda t: (
                t.repack_sparse(), t.pack_loose(self.config.pack_kib << 10)))
        self.stats["compact_repacked"] += moved
        self.stats["compact_packed"] += packed

    def _new_codec(self) -> BlockCodec | ClusterCodec:
        """The codec rounds encode with: here, or on the Ray cluster of
        ``compact_cluster`` (decoding and verifying still here)."""
        local = BlockCodec.from_model_files(self.model_files, self.config.compact_workers,
                                            self.encoders, policy_of(self.config))
        if not self.config.compact_cluster:
            return local
        try:
            return ClusterCodec(local, self.model_files, self.encoders,
                                self.config.compact_cluster, self.config.compact_cluster_device,
                                self.config.compact_cluster_verify)
        except BaseException:
            local.close()
            raise

    def _seen(self, raws: list[bytes]) -> None:
        if self.learner is not None:
            self.learner.offer(raws)

    def dictionary(self) -> None:
        """Train a store dictionary on the small blocks the model lost on; if
        it pays, code those again with it (fresh writes use it from now on)."""
        keys = self.sampler.train()
        if keys:
            self.stats["compact_dictionary_blocks"] += recompress_plain(
                self.store, keys, self.tag, self.lock, policy_of(self.config))["fallback"]
            self.stats["dictionaries"] += 1

    def round(self) -> bool:
        """One batch; False when there was nothing to do or it should pause."""
        if self.busy():
            self.stats["compact_yields"] += 1
            return False
        share = self.config.compact_cpu_share
        self.pack()
        if self.sampler.due():
            self.dictionary()
        if self.learner is not None and self.learner.due():   # a slice of store learning
            t0 = time.monotonic()
            self.stats["compact_busy"] = 1
            try:
                if self.learner.work(LEARN_SLICE_S):
                    self.reload_models()
            finally:
                self.stats["compact_busy"] = 0
            for k, v in self.learner.stats.items():
                self.stats[k] = v
            spent = time.monotonic() - t0
            return not self._stop.wait(spent * (1 - share) / share)
        cutoff = time.time_ns() - int(self.config.compact_after_s * 1e9)
        cursor = bytes.fromhex(self.store.read(lambda t: t.meta("compact_cursor")) or "")
        upgrade = self.config.compact_upgrade
        keys, nxt, settled = self.store.read(
            lambda t: cold_blocks(t, cursor, self.config.compact_batch, cutoff, self.tag, upgrade,
                                  self.first))
        if nxt != cursor or settled:
            with self.lock:
                self.store.write(lambda t: (t.settle(settled),
                                            t.set_meta("compact_cursor", nxt.hex())))
        if not keys:
            return bool(nxt)     # nothing cold in this stretch: go on unless the walk ended
        if self._codec is None:
            self._codec = self._new_codec()
            if self._stop.is_set():   # stop() may have looked before the codec existed
                self._codec.close()
                return False
        t0 = time.monotonic()
        self.stats["compact_busy"] = 1
        try:
            counts = recompress(self.store, self._codec, keys, self.lock, upgrade, self._seen,
                                self.sampler.offer)
        finally:
            self.stats["compact_busy"] = 0
        spent = time.monotonic() - t0
        self.stats["compact_rounds"] += 1
        self.stats["compact_tried"] += len(keys)
        self.stats["compact_llm"] += counts["llm"]
        self.stats["compact_fallback"] += counts["fallback"]
        self.stats["compact_upgraded"] += counts["upgraded"]
        self.stats["compact_saved_bytes"] += counts["saved_bytes"]
        self.stats["compact_gone"] += counts["gone"]   # overwritten or deleted meanwhile
        self.stats["compact_ms"] += int(spent * 1000)
        self.stats["verify_failures"] = counts["verify_failures"]
        return not self._stop.wait(spent * (1 - share) / share)

