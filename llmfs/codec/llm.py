"""The LLM codec: exact model frequencies + range coding (constriction).

Encoding evaluates each block in chunks of the model window (parallel over
the chunk); decoding is token by token with a KV cache, batched across
blocks.  Both see the same integer frequency tables (``model/engine.py``).

Blocks longer than the window use a sliding window: every token is
predicted from the previous ``window`` tokens (ALiBi needs no position
re-encoding, so old keys are simply evicted).

A block's tokens are coded in independent segments (``segments.py``), so
one block decodes as a batch of streams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from ..model.engine import FREQ_BITS, KVCache
from ..model.modelfile import LanguageModel
from .segments import SEGMENT, Stream, decode_segmented, join_segments

_FAMILY = constriction.stream.model.Categorical(perfect=False)


@dataclass
class Encoded:
    payload: bytes
    n_tokens: int


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

    def _tables(self, ids: np.ndarray):
        """Yield (start, end, freqs) chunk by chunk for token ids of one block."""
        syms = torch.from_numpy(ids)
        inp = torch.cat([torch.tensor([self.bos]), syms[:-1]])[None]
        cache = KVCache()
        for start in range(0, len(ids), self.chunk):
            end = min(len(ids), start + self.chunk)
            yield start, end, self.engine.freqs(self.engine.step(inp[:, start:end], cache)[0])

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

    def cost_bits(self, block: bytes, segment: int = SEGMENT) -> float:
        """Ideal code length of *block* in bits (what ``encode`` stores, within 0.1%)."""
        ids = self.model.tokenizer.encode(block)
        total = 0.0
        for seg in range(0, len(ids), segment):
            part = ids[seg:seg + segment]
            syms = torch.from_numpy(part)
            total += sum(self.token_bits(f, syms[s:e]) for s, e, f in self._tables(part))
        return total

    def encode(self, block: bytes, abort_bpb: float = math.inf) -> Encoded | None:
        """Range-code *block*; ``None`` when the first chunk already costs more
        than *abort_bpb* bits per byte (so the model cannot win)."""
        ids = self.model.tokenizer.encode(block)
        tok_bytes = self.model.tokenizer.id_bytes
        streams = []
        for seg in range(0, len(ids), SEGMENT):
            part = ids[seg:seg + SEGMENT]
            syms = torch.from_numpy(part)
            enc = constriction.stream.queue.RangeEncoder()
            for start, end, freqs in self._tables(part):
                if seg == start == 0 and math.isfinite(abort_bpb):
                    nbytes = sum(len(tok_bytes[i]) for i in part[:end])
                    if self.token_bits(freqs, syms[:end]) > abort_bpb * nbytes:
                        return None
                enc.encode(*self._three_buckets(freqs, syms[start:end]))
            streams.append((enc.get_compressed().tobytes(), len(part)))
        return Encoded(join_segments(streams), len(ids))

    def encode_many(self, jobs: list[tuple[bytes, float]]) -> list[Encoded | None]:
        """``encode(block, abort_bpb)`` for each job (the pool's interface, in-process)."""
        return [self.encode(*job) for job in jobs]

    def decode_many(self, items: list[tuple[bytes, int]]) -> list[list[int] | None]:
        """Decode (payload, n_tokens) pairs in one batch; returns token ids per
        item, or None for a payload the coder rejects (the others go on)."""
        return decode_segmented(items, self.decode_streams)

    def decode_streams(self, items: list[Stream]) -> list[list[int] | None]:
        """Decode independent streams in one batch, token by token."""
        out: list[list[int] | None] = [[] for _ in items]
        decoders = {}
        for i, (payload, n) in enumerate(items):
            if n == 0:
                continue
            if len(payload) % 4:
                out[i] = None
                continue
            decoders[i] = constriction.stream.queue.RangeDecoder(
                np.frombuffer(payload, dtype=np.uint32).copy())
        active = list(decoders)
        cache = KVCache()
        cur = torch.full((len(active), 1), self.bos, dtype=torch.int64)
        while active:
            freqs = self.engine.freqs(self.engine.step(cur, cache)[:, 0]).cpu().numpy()
            freqs = freqs.astype(np.float64)
            nxt, keep = [], []
            for row, i in enumerate(active):
                try:
                    sym = int(decoders[i].decode(_FAMILY, freqs[row:row + 1])[0])
                except (ValueError, RuntimeError, AssertionError):
                    out[i] = None
                    continue
                out[i].append(sym)
                if len(out[i]) < items[i][1]:
                    nxt.append(sym)
                    keep.append(row)
            if len(keep) < len(active):
                active = [active[r] for r in keep]
                if active:
                    cache.select(torch.tensor(keep))
            cur = torch.tensor(nxt, dtype=torch.int64)[:, None]
        return out
