"""Codec policy and the batch API: ``encode_blocks`` / ``decode_blocks``.

Every block is stored with the smallest frame that decoded back to the same
bytes: raw (nothing shrinks it), zstd, LZMA (binary data, where xz beats
zstd -19 by 5-15 %), PPMd (structured text the model does not know), ZPAQ
(where the model did not win and context mixing beats both), or llm.  A
zstd level-1 probe runs first (as ZFS's early abort does) so incompressible
data never reaches the model; the model gives up after its first chunk if
it is already worse than zstd.  An llm frame is kept only after the real
batched decoder reproduced the block; every failure is counted.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zstandard

from typing import TYPE_CHECKING

from ..model import ModelFile
from .frame import VERSION, Codec, Frame, FrameError, checksum
from .plain import lzma_payload, missing, plain_bytes, ppmd_payload, zpaq_payload, zstd_frame
from .segments import Coded
from .workers import LLMPool

if TYPE_CHECKING:
    from ..model.modelfile import LanguageModel
    from .llm import LLMCodec

log = logging.getLogger(__name__)
ZPAQ_MIN_FRAME = 1024   # below this a ZPAQ block's own header (~300 bytes) eats the gain


def _smaller_verified(x: Frame, than: Frame, raw: bytes, margin: float = 0.0) -> bool:
    """Whether model-free frame *x* is *margin* (a fraction) smaller than
    *than* and decodes back to *raw*: the test every fallback passes before
    it is kept.  A zdict header is 8 bytes longer (its dictionary id)."""
    return len(x.payload) + 8 * (x.codec == Codec.ZDICT) < (1 - margin) * len(than.payload) \
        and plain_bytes(x) == raw


@dataclass(frozen=True)
class Policy:
    zstd_level: int = 19        # level of the zstd frame kept as fallback
    use_lzma: bool = True       # also try LZMA (xz -9e, +x86 BCJ) and keep it when smaller
    use_ppmd: bool = True       # also try PPMd var. I order 8 and keep it when smaller
    use_zpaq: bool = True       # where the model did not win, also try ZPAQ level 5 ...
    zpaq_gain: float = 0.03     # ... kept when this much smaller (its decode: ~0.4 s a block)
    use_llm: bool = True
    probe_ratio: float = 0.97   # zstd-1 output above this fraction -> incompressible, no llm
    min_llm_bytes: int = 64     # tiny blocks are not worth a model call


def _in_process(model: LanguageModel | ModelFile) -> LLMCodec:
    from ..model.modelfile import LanguageModel
    from .llm import LLMCodec

    if isinstance(model, ModelFile):
        model = LanguageModel.from_bytes(model.data)
    return LLMCodec(model)


def encoder_tag(short_ids: list[bytes]) -> bytes:
    """Names a list of encoding models and the frame format they write: the
    compactor marks blocks none of them shrank with it, and tries them again
    only when the list changes or a new format codes better (the match model
    of version 3 and the n-gram caches of version 4 made blocks the model had
    lost worth another try)."""
    return hashlib.blake2b(bytes([VERSION]) + b"".join(short_ids), digest_size=8).digest()


class BlockCodec:
    """Encodes and decodes block frames; holds the models it may use."""

    def __init__(self, model: LanguageModel | ModelFile | None = None, policy: Policy = Policy(),
                 extra_models: tuple[LanguageModel | ModelFile, ...] = (),
                 workers: int = 0, encoders: int = 1) -> None:
        """*model* and the first ``encoders - 1`` of *extra_models* encode (each
        block keeps the smallest verified frame of any of them); all decode.
        *workers* >= 1 runs each model in that many single-thread processes
        (the GIL stays free for the caller), and ZPAQ on that many threads; 0
        runs both in this thread."""
        self.policy = policy
        self.model = model
        self.workers = workers
        self.llm: dict[bytes, LLMCodec | LLMPool] = {}
        for m in (model, *extra_models):
            if m is not None:
                self.llm[m.short_id] = LLMPool(m, workers) if workers >= 1 else _in_process(m)
        self.encoders = [m.short_id for m in (model, *extra_models)[:encoders] if m is not None]
        self.encoder_tag = encoder_tag(self.encoders)   # names this set of encoding models
        self.counters: Counter[str] = Counter()

    @classmethod
    def from_model_files(cls, files: list[bytes], workers: int = 0, encoders: int = 1,
                         policy: Policy = Policy()) -> "BlockCodec":
        """A decoder for every model in *files* (model file bytes, e.g. a
        store's models); the first *encoders* of them also encode."""
        if workers >= 1:   # the engine lives in the workers; this process stays torch-free
            models = [ModelFile(d) for d in files]
        else:
            from ..model.modelfile import LanguageModel

            models = [LanguageModel.from_bytes(d) for d in files]
        return cls(models[0] if models else None, policy, extra_models=tuple(models[1:]),
                   workers=workers, encoders=encoders)

    def start(self) -> None:
        """Start the worker processes of the first encoding model (the one
        most frames name) before any block needs them."""
        first = self.llm.get(self.encoders[0]) if self.encoders else None
        if isinstance(first, LLMPool):
            first.start()

    def close(self, abort: bool = False) -> None:
        """Stop the model workers (*abort*: without finishing work under way)."""
        for c in self.llm.values():
            if isinstance(c, LLMPool):
                c.close(abort)

    def __enter__(self) -> "BlockCodec":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding --------------------------------------------------------
    def encode_blocks(self, blocks: list[bytes], dictionary: bytes | None = None) -> list[bytes]:
        """Frames for *blocks*, each the smallest verified encoding; zstd also
        with the store's *dictionary* (an id known to this process) if given."""
        frames: list[Frame] = []
        llm_todo: list[int] = []
        probe = zstandard.ZstdCompressor(level=1)
        full = zstandard.ZstdCompressor(level=self.policy.zstd_level)
        for i, raw in enumerate(blocks):
            digest = checksum(raw)
            best = Frame(Codec.RAW, len(raw), digest, raw)
            tries = [zstd_frame(raw, self.policy.zstd_level, dictionary, digest)
                     if dictionary and raw else None]   # shared history: the probe cannot tell
            if len(raw) and len(probe.compress(raw)) < self.policy.probe_ratio * len(raw):
                z = full.compress(raw)
                if len(z) < len(raw):
                    best = Frame(Codec.ZSTD, len(raw), digest, z)
                for codec, on, payload in ((Codec.LZMA, self.policy.use_lzma, lzma_payload),
                                           (Codec.PPMD, self.policy.use_ppmd, ppmd_payload)):
                    tries.append(Frame(codec, len(raw), digest, payload(raw)) if on else None)
                if self.policy.use_llm and self.model is not None \
                        and len(raw) >= self.policy.min_llm_bytes:
                    llm_todo.append(i)
            else:
                self.counters["probe_incompressible"] += 1
            for x in tries:
                if x is not None and _smaller_verified(x, best, raw):
                    best = x
            frames.append(best)
        if llm_todo:
            self._try_llm(blocks, frames, llm_todo)
        if self.policy.use_zpaq:
            self._try_zpaq(blocks, frames)
        for f in frames:
            self.counters[f"blocks_{f.codec.name.lower()}"] += 1
        return [f.pack() for f in frames]

    def _try_zpaq(self, blocks: list[bytes], frames: list[Frame]) -> None:
        """ZPAQ for the blocks that shrank but not with the model (binaries,
        tables, data the model does not know): about 8 % below the best of
        LZMA and PPMd there, at ~0.15 MB/s each way, so it is kept only where
        it saves ``zpaq_gain`` of the frame, and never tried on what the
        model already won."""
        def smaller(i: int) -> Frame | None:
            f, raw = frames[i], blocks[i]
            x = Frame(Codec.ZPAQ, len(raw), f.digest, zpaq_payload(raw))
            return x if _smaller_verified(x, f, raw, self.policy.zpaq_gain) else None

        todo = [i for i, f in enumerate(frames)
                if f.codec not in (Codec.RAW, Codec.LLM) and len(f.payload) >= ZPAQ_MIN_FRAME]
        if not todo:
            return
        # libzpaq releases the GIL: as many blocks at once as the codec has model workers
        with ThreadPoolExecutor(max(1, min(self.workers, len(todo)))) as pool:
            for i, x in zip(todo, pool.map(smaller, todo)):
                if x is not None:
                    frames[i] = x

    def _try_llm(self, blocks: list[bytes], frames: list[Frame], todo: list[int]) -> None:
        """Encode *todo* with every encoding model; keep per block the smallest
        llm frame that the real decoder gave back."""
        cands: dict[int, Frame] = {}
        for mid in self.encoders:
            # give up early when the model is already worse than the best frame so far
            best = {i: cands.get(i, frames[i]) for i in todo}
            jobs = [(blocks[i], 8.0 * len(best[i].payload) / len(blocks[i])) for i in todo]
            for i, enc in zip(todo, self.llm[mid].encode_many(jobs)):
                if enc is None:
                    self.counters["llm_aborted"] += 1
                elif len(enc.payload) + 12 < len(best[i].payload):
                    cands[i] = Frame(Codec.LLM, len(blocks[i]), best[i].digest, enc.payload,
                                     mid, enc.n_tokens, enc.version)
                else:
                    self.counters["llm_not_smaller"] += 1
        if not cands:
            return
        order = list(cands)  # verify: the real decoder must give the block back
        for i, got in zip(order, self._decode_llm([cands[i] for i in order])):
            if got == blocks[i]:
                frames[i] = cands[i]
            else:
                self.counters["verify_failures"] += 1
                log.error("llm frame of block %d did not decode back; kept %s",
                          i, frames[i].codec.name)

    # -- decoding --------------------------------------------------------
    def decode_blocks(self, frames: list[bytes]) -> list[bytes]:
        """Original bytes of each frame; raises FrameError on the first damaged one."""
        out = self.decode_each(frames)
        for i, r in enumerate(out):
            if isinstance(r, FrameError):
                raise FrameError(f"block {i}: {r}")
        return out  # type: ignore[return-value]

    def decode_each(self, frames: list[bytes]) -> list[bytes | FrameError]:
        """Like decode_blocks, but a damaged frame yields its FrameError in place,
        so one bad block never hides the others."""
        out: list[bytes | FrameError | None] = [None] * len(frames)
        parsed: dict[int, Frame] = {}
        for i, raw in enumerate(frames):
            try:
                parsed[i] = Frame.unpack(raw)
            except FrameError as e:
                out[i] = e
        llm_idx = []
        for i, f in parsed.items():
            if f.codec != Codec.LLM:
                out[i] = missing(f) or plain_bytes(f)
            elif f.model not in self.llm:
                out[i] = FrameError(f"block needs unknown model {f.model.hex()}; "
                                    "load it with --model or add it to the store")
            else:
                llm_idx.append(i)
        for i, data in zip(llm_idx, self._decode_llm([parsed[i] for i in llm_idx])):
            out[i] = data
        for i, f in parsed.items():
            data = out[i]
            if isinstance(data, FrameError):
                continue
            if data is None or len(data) != f.raw_len or checksum(data) != f.digest:
                self.counters["checksum_errors"] += 1
                out[i] = FrameError("checksum mismatch: decoded bytes differ from the original")
        return out  # type: ignore[return-value]

    def _decode_llm(self, frames: list[Frame]) -> list[bytes | None]:
        """Decode llm frames, batched per model; None where the coder rejects one."""
        out: list[bytes | None] = [None] * len(frames)
        by_model: dict[bytes, list[int]] = {}
        for i, f in enumerate(frames):
            by_model.setdefault(f.model, []).append(i)
        for mid, idx in by_model.items():
            codec = self.llm[mid]
            toks = codec.decode_many([Coded(frames[i].payload, frames[i].n_tokens, frames[i].version)
                                      for i in idx])
            for i, t in zip(idx, toks):
                out[i] = None if t is None else codec.model.tokenizer.decode(t)
        return out
