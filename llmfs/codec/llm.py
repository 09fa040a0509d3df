"""The LLM codec: exact model frequencies + range coding (constriction).

A block's tokens are coded in segments (``segments.py``), independent
range-coder streams, so one block decodes as a batch of streams.  Encoding
runs a block's streams through the engine as one batch, in chunks (parallel
over each chunk); decoding is token by token with a KV cache, batched across
streams and blocks.  Both see the same integer frequency tables
(``model/engine.py``).  Streams longer than the window use a sliding window:
every token is predicted from the previous ``window`` tokens (ALiBi needs no
position re-encoding, so old keys are simply evicted).

Both then step a block's streams in lockstep through one ``Mixer``
(``mixer.py``), which mixes the model's tables with what the block has shown
so far (match model, n-gram caches), as the payload's frame version says.
"""
from __future__ import annotations

import math

from collections.abc import Callable

import constriction
import numpy as np
import zstandard

from ..model import native
from ..model.intformat import FREQ_BITS
from ..model.modelfile import LanguageModel
from .frame import MODEL_ALONE, VERSION
from .mixer import Stats, new_mixer
from .segments import SEGMENT, Coded, Stream, join_segments, regroup, split_segments

_FAMILY = constriction.stream.model.Categorical(perfect=False)


class LLMCodec:
    """Encode/decode byte blocks with one language model."""

    def __init__(self, model: LanguageModel, chunk: int | None = None) -> None:
        self.model = model
        self.engine = native.choose(model)   # the C core where it runs the model
        self.chunk = chunk or model.cfg.window
        ids = model.tokenizer.encode(b"\n")
        self.bos = int(ids[0])  # fixed first context token: the model saw "\n" before documents

    def _stats(self, ids: np.ndarray, segment: int, version: int,
               give_up: GiveUp | None = None) -> tuple[list[Stats], list[Stats]] | None:
        """Code the token ids *ids* as streams of *segment* tokens, in lockstep,
        with the model alone and mixed as frame *version* says; returns each
        stream's (symbol, cumulative, frequency) of its tokens both ways, or
        None when *give_up* (bits of the streams' first window the cheaper way,
        the bytes of that window) says the model cannot win."""
        parts = [ids[s:s + segment] for s in range(0, len(ids), segment)]
        if not parts:
            return [], []
        B, L = len(parts), len(parts[0])
        toks = np.zeros((B, L), dtype=np.int64)         # each stream's tokens, padded
        for i, part in enumerate(parts):
            toks[i, :len(part)] = part
        inp = np.empty_like(toks)                       # ... and its inputs
        inp[:, 0], inp[:, 1:] = self.bos, toks[:, :-1]
        lens = np.array([len(p) for p in parts], dtype=np.int64)
        # 512 tables a step (cache-sized), fewer for a large vocabulary (the strong tier's
        # 49k: 170 tables, 64 MiB)
        chunk = min(self.chunk, max(16, min(512, (1 << 23) // self.model.cfg.vocab) // B))
        mixer = new_mixer(B, version, self.model.cfg.vocab)
        cache = self.engine.new_cache()
        stats = {m: np.zeros((B, L, 3), dtype=np.int64) for m in (False, True)}
        for start in range(0, L, chunk):
            end = min(L, start + chunk)
            freqs = model_tables(self.engine, inp[:, start:end], cache)
            mixer.run(freqs, toks, lens, start, stats[False], stats[True])
            # the give-up test: once every stream is a window in (each cold start costs more,
            # so fewer tokens per stream would give up on blocks the model wins)
            if give_up is not None and start < min(L, self.chunk) <= end:
                bits = min(sum(ideal_bits(st[i, :min(end, len(p))]) for i, p in enumerate(parts))
                           for st in stats.values())
                seen = b"".join(self.model.tokenizer.decode(p[:end]) for p in parts)
                if give_up(bits, seen):
                    return None
        return ([stats[False][i, :len(p)] for i, p in enumerate(parts)],
                [stats[True][i, :len(p)] for i, p in enumerate(parts)])

    def cost_bits(self, block: bytes, segment: int = SEGMENT, version: int = VERSION) -> float:
        """Ideal code length of *block* in bits, coded as frame *version* codes
        it (what ``encode`` stores, within 0.1%)."""
        ids = self.model.tokenizer.encode(block)
        alone, mixed = self._stats(ids, segment, version)
        return sum(ideal_bits(st) for st in (alone if version == MODEL_ALONE else mixed))

    def encode(self, block: bytes, abort_bpb: float = math.inf) -> Coded | None:
        """Range-code *block* twice, with the model alone and mixed (frame
        ``VERSION``), and keep the smaller (a model that already knows the data
        well can lose by the mixing); ``None`` when the streams' first window
        predicts more than *abort_bpb* bits per byte for the whole block both
        ways (``predicts_loss``)."""
        ids = self.model.tokenizer.encode(block)
        give_up = None
        if math.isfinite(abort_bpb):
            def give_up(bits: float, seen: bytes) -> bool:
                return predicts_loss(bits, seen, block, abort_bpb)
        both = self._stats(ids, SEGMENT, VERSION, give_up)
        if both is None:
            return None
        vocab = self.model.cfg.vocab
        payloads = {}
        for version, stats in zip((MODEL_ALONE, VERSION), both):
            streams: list[Stream] = []
            for st in stats:
                coder = constriction.stream.queue.RangeEncoder()
                if len(st):
                    coder.encode(*three_buckets(st, vocab))
                streams.append((coder.get_compressed().tobytes(), len(st)))
            payloads[version] = join_segments(streams)
        version = VERSION if len(payloads[VERSION]) < len(payloads[MODEL_ALONE]) else MODEL_ALONE
        return Coded(payloads[version], len(ids), version)   # a tie: independent streams

    def encode_many(self, jobs: list[tuple[bytes, float]]) -> list[Coded | None]:
        """``encode(block, abort_bpb)`` for each job (the pool's interface, in-process)."""
        return [self.encode(*job) for job in jobs]

    def decode_many(self, items: list[Coded]) -> list[list[int] | None]:
        """Decode payloads in one batch; returns token ids per item, or None
        for a payload the coder rejects (the others go on)."""
        splits = [split_segments(item.payload, item.n_tokens) for item in items]
        streams: list[Stream] = []
        owners: list[int] = []
        groups: list[tuple[range, int]] = []    # the streams of each item mixed, and how
        for i, (item, segs) in enumerate(zip(items, splits)):
            if item.version != MODEL_ALONE and segs:
                groups.append((range(len(streams), len(streams) + len(segs)), item.version))
            owners += [i] * len(segs or ())
            streams += segs or ()
        toks = regroup(owners, self._decode_streams(streams, groups), len(items))
        return [None if segs is None else t for segs, t in zip(splits, toks)]

    def _decode_streams(self, streams: list[Stream],
                        groups: list[tuple[range, int]]) -> list[list[int] | None]:
        """Decode streams in one batch, token by token, all in lockstep; the
        streams of each of *groups* (index range, payload version) share a Mixer.
        The native core runs the whole loop in one call."""
        if isinstance(self.engine, native.NativeEngine):
            return self.engine.decode(self.bos, streams,
                                      [(g.start, len(g), version) for g, version in groups])
        out: list[list[int] | None] = [[] for _ in streams]
        decoders = {}
        for i, (payload, n) in enumerate(streams):
            if n == 0:
                continue
            if len(payload) % 4:
                out[i] = None
                continue
            decoders[i] = constriction.stream.queue.RangeDecoder(
                np.frombuffer(payload, dtype=np.uint32).copy())
        vocab = self.model.cfg.vocab
        mixers = [(new_mixer(len(g), version, vocab), g) for g, version in groups]
        active = list(decoders)
        cache = self.engine.new_cache()
        cur = np.full((len(active), 1), self.bos, dtype=np.int64)
        while active:
            freqs = model_tables(self.engine, cur, cache)[:, 0]
            where = {i: row for row, i in enumerate(active)}
            steps = []                       # (mixer, rows, ids in its group)
            for mixer, g in mixers:
                rows = [where[k] for k in g if k in where]
                if rows:
                    ids = [active[r] - g.start for r in rows]
                    freqs[rows] = mixer.tables(freqs[rows], ids)
                    steps.append((mixer, rows, ids))
            table = freqs.astype(np.float64)
            syms, nxt, keep = [], [], []
            for row, i in enumerate(active):
                try:
                    sym = int(decoders[i].decode(_FAMILY, table[row:row + 1])[0])
                except (ValueError, RuntimeError, AssertionError):
                    out[i], sym = None, 0       # its item fails; its mixer learns a stand-in
                syms.append(sym)
                if out[i] is not None:
                    out[i].append(sym)
                    if len(out[i]) < streams[i][1]:
                        nxt.append(sym)
                        keep.append(row)
            for mixer, rows, ids in steps:
                mixer.learn(ids, [syms[r] for r in rows])
            if len(keep) < len(active):
                active = [active[r] for r in keep]
                if active:
                    cache.select(keep)
            cur = np.array(nxt, dtype=np.int64)[:, None]
        return out


GiveUp = Callable[[float, bytes], bool]
_ZSTD19 = zstandard.ZstdCompressor(level=19)


def predicts_loss(bits: float, seen: bytes, block: bytes, target_bpb: float) -> bool:
    """Whether *bits*, the model's cost of the bytes *seen* of *block* so far,
    predicts more than *target_bpb* bits per byte for the whole block.

    Comparing the first window with the whole block's rate gave up on blocks
    the model wins: the model learns the block as it goes (its n-gram caches
    and match model), so its first window costs more than its average.  Every
    adaptive coder pays that; zstd -19 stands in for the learning curve, so
    the model's whole-block cost is predicted as its cost so far times how
    much zstd shrinks the whole block relative to the same bytes seen
    (``bits * zstd(block) / zstd(seen)``).  Two zstd -19 runs, about 40 ms a
    64 KiB block, against seconds of model time for a block that cannot win."""
    growth = len(_ZSTD19.compress(block)) / max(1, len(_ZSTD19.compress(seen)))
    return bits * growth > target_bpb * len(block)


def model_tables(engine, tokens: np.ndarray, cache) -> np.ndarray:
    """The frequency tables [B, n, V] (int64) of the next *tokens* [B, n] of a
    batch, from the native core or the torch engine (torch is imported only
    for the latter)."""
    if isinstance(engine, native.NativeEngine):
        return engine.freqs(engine.step(tokens, cache), inplace=True)
    import torch

    logits = engine.step(torch.from_numpy(np.ascontiguousarray(tokens)), cache)
    return np.ascontiguousarray(engine.freqs(logits).cpu().numpy())


def ideal_bits(stats: Stats) -> float:
    """Ideal code length of the coded symbols (the coder adds 1 to each entry)."""
    return float((FREQ_BITS - np.log2(stats[:, 2] + 1.0)).sum()) if len(stats) else 0.0


def three_buckets(stats: Stats, vocab: int) -> tuple[np.ndarray, object, np.ndarray]:
    """Arguments for constriction's ``encode``: coding symbol s of a table f
    (constriction gives each entry f_j + 1, total exactly 2**24) is the same
    range-coder step as coding the middle bucket of (lo - 1, f_s, 2**24 - lo
    - f_s - 2) with lo = sum_{j<s}(f_j + 1): same interval, same bits, but
    three entries instead of the vocabulary.  The first and last symbol use
    the outer buckets instead, so no bucket goes negative.  The decoder
    searches the full table; every stored frame was decoded that way before
    it was kept."""
    syms, lo, fs = stats.T
    total = 1 << FREQ_BITS
    first, final = syms == 0, syms == vocab - 1
    mid = np.stack([lo - 1, fs, total - lo - fs - 2], 1)
    # s == 0: (f_0, rest - 2, 0) coded as bucket 0; s == last: (0, lo - 2, f_s) as bucket 2
    zero = np.zeros(int(first.sum()), dtype=np.int64)
    mid[first] = np.stack([fs[first], total - fs[first] - 3, zero], 1)
    zero = np.zeros(int(final.sum()), dtype=np.int64)
    mid[final] = np.stack([zero, lo[final] - 2, fs[final]], 1)
    which = np.ones(len(syms), dtype=np.int32)
    which[first], which[final] = 0, 2
    return which, _FAMILY, mid.astype(np.float64)
