"""The LLM codec: exact model frequencies + range coding (constriction).

Encoding evaluates each block in chunks of the model window (parallel over
the chunk); decoding is token by token with a KV cache, batched across
blocks.  Both see the same integer frequency tables (``model/engine.py``).

Blocks longer than the window use a sliding window: every token is
predicted from the previous ``window`` tokens (ALiBi needs no position
re-encoding, so old keys are simply evicted).

A block's tokens are coded in independent segments (``segments.py``), so
one block decodes as a batch of streams.  Within a stream the model's tables
are mixed with a match model (``match.py``) for repeats beyond the window;
payloads written before it (frame version 2) decode without.
"""
from __future__ import annotations

import math

import constriction
import numpy as np
import torch

from ..model.engine import FREQ_BITS, KVCache
from ..model.modelfile import LanguageModel
from .match import Confidence, MatchGroup, match_plan, mix
from .segments import SEGMENT, Coded, Stream, join_segments, regroup, split_segments

_FAMILY = constriction.stream.model.Categorical(perfect=False)


class LLMCodec:
    """Encode/decode byte blocks with one language model."""

    def __init__(self, model: LanguageModel, chunk: int | None = None) -> None:
        self.model = model
        self.engine = model.engine
        self.chunk = chunk or model.cfg.window
        ids = model.tokenizer.encode(b"\n")
        self.bos = int(ids[0])  # fixed first context token: the model saw "\n" before documents

    @staticmethod
    def token_bits(freqs: torch.Tensor, syms: torch.Tensor) -> float:
        """Ideal code length of *syms* under integer tables *freqs* (coder adds 1 each)."""
        f = freqs.gather(-1, syms.to(freqs.device)[:, None]).squeeze(-1).double() + 1
        return float((FREQ_BITS - torch.log2(f)).sum())

    def _streams(self, ids: np.ndarray, segment: int):
        """Yield each segment's token ids and its chunks' tables (``_tables``)."""
        parts = [ids[s:s + segment] for s in range(0, len(ids), segment)]
        for part, plan in zip(parts, match_plan([p.tolist() for p in parts])):
            yield part, self._tables(part, plan)

    def _tables(self, ids: np.ndarray, plan: list[tuple[int, int] | None]):
        """Yield (start, end, model tables, tables mixed with the match
        predictions *plan*) chunk by chunk for the token ids of one stream."""
        syms = torch.from_numpy(ids)
        inp = torch.cat([torch.tensor([self.bos]), syms[:-1]])[None]
        cache = KVCache()
        conf = Confidence()
        toks = ids.tolist()
        for start in range(0, len(ids), self.chunk):
            end = min(len(ids), start + self.chunk)
            alone = self.engine.freqs(self.engine.step(inp[:, start:end], cache)[0]).cpu()
            mixed = alone.clone()
            table = mixed.numpy()
            rows, preds, probs = [], [], []
            for k in range(end - start):
                if plan[start + k] is not None:
                    pred, length = plan[start + k]
                    rows.append(k)
                    preds.append(pred)
                    probs.append(conf.prob(length, int(table[k, pred])))
                    conf.learn(toks[start + k] == pred)
            mix(table, rows, preds, probs)
            yield start, end, alone, mixed

    @staticmethod
    def _three_buckets(freqs: torch.Tensor, syms: torch.Tensor):
        """The coder only needs (cumulative, frequency) of each coded symbol.

        Encoding symbol s of table f (constriction gives each entry f_j + 1,
        total exactly 2**24) is the same range-coder step as encoding the
        middle bucket of (lo - 1, f_s, 2**24 - lo - f_s - 2) with
        lo = sum_{j<s}(f_j + 1): same interval, same bits, but three entries
        instead of the vocabulary.  The first and last symbol use the outer
        buckets instead, so no bucket goes negative.  The decoder searches the
        full table; every stored frame was decoded that way before it was kept.
        """
        syms = syms.to(freqs.device)
        fs = freqs.gather(1, syms[:, None]).squeeze(1)
        lo = (freqs.cumsum(1).gather(1, syms[:, None]).squeeze(1) - fs) + syms
        total = 1 << FREQ_BITS
        last = freqs.shape[1] - 1
        first, final = syms == 0, syms == last
        mid = torch.stack([lo - 1, fs, total - lo - fs - 2], 1)
        # s == 0: (f_0, rest - 2, 0) coded as bucket 0; s == last: (0, lo - 2, f_s) as bucket 2
        mid[first] = torch.stack([fs[first], total - fs[first] - 3, torch.zeros_like(fs[first])], 1)
        mid[final] = torch.stack([torch.zeros_like(fs[final]), lo[final] - 2, fs[final]], 1)
        which = torch.ones_like(syms)
        which[first], which[final] = 0, 2
        return (which.cpu().numpy().astype(np.int32), _FAMILY,
                mid.cpu().numpy().astype(np.float64))

    def cost_bits(self, block: bytes, segment: int = SEGMENT, match: bool = True) -> float:
        """Ideal code length of *block* in bits (what ``encode`` stores, within
        0.1%); ``match=False``: as version-2 frames coded it, with the model alone."""
        ids = self.model.tokenizer.encode(block)
        total = 0.0
        for part, tables in self._streams(ids, segment):
            syms = torch.from_numpy(part)
            total += sum(self.token_bits(mixed if match else alone, syms[s:e])
                         for s, e, alone, mixed in tables)
        return total

    def encode(self, block: bytes, abort_bpb: float = math.inf) -> Coded | None:
        """Range-code *block* twice, with the model alone and mixed with the
        match model, and keep the smaller (a model that already knows the data
        well can lose by the mixing); ``None`` when the first chunk already
        costs more than *abort_bpb* bits per byte both ways (the model cannot win)."""
        ids = self.model.tokenizer.encode(block)
        tok_bytes = self.model.tokenizer.id_bytes
        streams: dict[bool, list[Stream]] = {False: [], True: []}
        for seg, (part, tables) in enumerate(self._streams(ids, SEGMENT)):
            syms = torch.from_numpy(part)
            coders = {m: constriction.stream.queue.RangeEncoder() for m in streams}
            for start, end, alone, mixed in tables:
                if seg == start == 0 and math.isfinite(abort_bpb):
                    nbytes = sum(len(tok_bytes[i]) for i in part[:end])
                    if min(self.token_bits(alone, syms[:end]),
                           self.token_bits(mixed, syms[:end])) > abort_bpb * nbytes:
                        return None
                for m, freqs in ((False, alone), (True, mixed)):
                    coders[m].encode(*self._three_buckets(freqs, syms[start:end]))
            for m, coder in coders.items():
                streams[m].append((coder.get_compressed().tobytes(), len(part)))
        payloads = {m: join_segments(s) for m, s in streams.items()}
        match = len(payloads[True]) < len(payloads[False])   # a tie: independent streams
        return Coded(payloads[match], len(ids), match)

    def encode_many(self, jobs: list[tuple[bytes, float]]) -> list[Coded | None]:
        """``encode(block, abort_bpb)`` for each job (the pool's interface, in-process)."""
        return [self.encode(*job) for job in jobs]

    def decode_many(self, items: list[Coded]) -> list[list[int] | None]:
        """Decode payloads in one batch; returns token ids per item, or None
        for a payload the coder rejects (the others go on)."""
        splits = [split_segments(item.payload, item.n_tokens) for item in items]
        streams: list[Stream] = []
        owners: list[int] = []
        groups: list[range] = []          # the streams of each item coded with the match model
        for i, (item, segs) in enumerate(zip(items, splits)):
            if item.match and segs:
                groups.append(range(len(streams), len(streams) + len(segs)))
            owners += [i] * len(segs or ())
            streams += segs or ()
        toks = regroup(owners, self._decode_streams(streams, groups), len(items))
        return [None if segs is None else t for segs, t in zip(splits, toks)]

    def _decode_streams(self, streams: list[Stream], groups: list[range]) -> list[list[int] | None]:
        """Decode streams in one batch, token by token, all in lockstep; the
        streams of each of *groups* (index ranges) share a match model."""
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
        matchers = [(MatchGroup(len(g)), g) for g in groups]
        member = {k: (m, k - g.start) for m, g in matchers for k in g}
        conf = {k: Confidence() for k in member}
        active = list(decoders)
        cache = KVCache()
        cur = torch.full((len(active), 1), self.bos, dtype=torch.int64)
        while active:
            freqs = self.engine.freqs(self.engine.step(cur, cache)[:, 0]).cpu().numpy()
            guess: dict[int, tuple[int, int]] = {}
            for m, g in matchers:
                for k, p in zip(g, m.predictions()):
                    if p is not None:
                        guess[k] = p
            rows, preds, probs = [], [], []
            for row, i in enumerate(active):
                if i in guess:
                    pred, length = guess[i]
                    rows.append(row)
                    preds.append(pred)
                    probs.append(conf[i].prob(length, int(freqs[row, pred])))
            mix(freqs, rows, preds, probs)
            freqs = freqs.astype(np.float64)
            nxt, keep = [], []
            for row, i in enumerate(active):
                try:
                    sym = int(decoders[i].decode(_FAMILY, freqs[row:row + 1])[0])
                except (ValueError, RuntimeError, AssertionError):
                    out[i] = None
                    continue
                out[i].append(sym)
                if i in guess:
                    conf[i].learn(sym == guess[i][0])
                if i in member:
                    m, local = member[i]
                    m.append(local, sym)
                if len(out[i]) < streams[i][1]:
                    nxt.append(sym)
                    keep.append(row)
            if len(keep) < len(active):
                active = [active[r] for r in keep]
                if active:
                    cache.select(torch.tensor(keep))
            cur = torch.tensor(nxt, dtype=torch.int64)[:, None]
        return out
