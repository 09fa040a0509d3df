"""``llmfs train``: a model for one archive, from a sample of its own data.

Samples blocks of a store (or a directory), holds some back, fine-tunes the
base model on the rest (``model/tune.py``) and measures both models on the
held-back blocks with the real codec: the bytes an llm frame would take.
For a store the new model is kept in it and put first among the models the
compactor encodes with; every block still keeps the smallest verified frame
of any of them, so the base model goes on serving the blocks it codes better.
"""
from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zstandard

from ..codec.frame import Codec
from ..codec.plain import decode_plain, frame_codec
from ..codec.policy import Policy
from ..store import Store

if TYPE_CHECKING:
    from ..model.modelfile import LanguageModel

def _compressible(block: bytes) -> bool:
    """The codec policy's probe: blocks zstd -1 cannot shrink never reach the model."""
    probe = zstandard.ZstdCompressor(level=1)
    return len(block) >= 256 and len(probe.compress(block)) < Policy.probe_ratio * len(block)


def _take(candidates: list, read: Callable[[object], bytes | None], nbytes: int,
          seed: int) -> list[bytes]:
    """Blocks from *candidates* in a seeded random order until *nbytes*;
    incompressible ones are skipped (the model never sees them in a store)."""
    random.Random(seed).shuffle(candidates)
    out: list[bytes] = []
    total = 0
    for c in candidates:
        if total >= nbytes:
            break
        block = read(c)
        if block is not None and _compressible(block):
            out.append(block)
            total += len(block)
    return out


def sample_directory(root: Path, nbytes: int, block: int, seed: int = 0) -> list[bytes]:
    """Up to *nbytes* of *block*-sized pieces of the regular files under *root*."""
    spots: list[tuple[str, int]] = []
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                spots += [(p, off) for off in range(0, os.path.getsize(p), block)]

    def read(spot: object) -> bytes | None:
        path, off = spot  # type: ignore[misc]
        try:
            with open(path, "rb") as f:
                f.seek(off)
                return f.read(block)
        except OSError:
            return None
    return _take(spots, read, nbytes, seed)


def sample_store(store: Store, nbytes: int, decode_llm: Callable[[list[bytes]], list],
                 seed: int = 0) -> list[bytes]:
    """Up to *nbytes* of a store's stored blocks, read one at a time (a store
    may be far larger than memory); llm frames are decoded with *decode_llm*
    only when the plain ones are too few (the model is slow)."""
    keys = store.read(lambda t: [k for k, _ in t.scan("refs")])
    llm: list[bytes] = []          # keys of llm frames met on the way

    def read(key: object) -> bytes | None:
        frame = store.read(lambda t: t.frame(key))
        if frame is None:
            return None
        if frame_codec(frame) == Codec.LLM:
            llm.append(key)        # type: ignore[arg-type]
            return None
        return _ok(decode_plain(frame))

    out = _take(keys, read, nbytes, seed)
    have = sum(map(len, out))
    if have < nbytes and llm:
        want = llm[: max(1, (nbytes - have) // max(1, store.block_size))]
        frames = [f for f in store.read(lambda t: [t.frame(k) for k in want]) if f is not None]
        out += [b for b in map(_ok, decode_llm(frames)) if b is not None]
    return out


def _ok(result: object) -> bytes | None:
    return result if isinstance(result, bytes) else None


def split(blocks: list[bytes], held_fraction: float, held_max: int) -> tuple[list, list]:
    """Hold back every k-th block (at least one, at most *held_max* bytes)."""
    if len(blocks) < 2:
        raise ValueError(f"the sample has {len(blocks)} compressible block(s); "
                         "training needs at least 2 (one is held back)")
    k = min(len(blocks), max(2, round(1 / held_fraction)))
    held, train = [], []
    for i, b in enumerate(blocks):
        (held if i % k == k - 1 and sum(map(len, held)) < held_max else train).append(b)
    return train, held


@dataclass
class Outcome:
    model: bytes           # the new model file
    train_bytes: int
    held_bytes: int
    base_stored: int       # llm payload bytes of the held-back blocks, the rival model
    new_stored: int        # the same with the new model

    @property
    def base_bpb(self) -> float:
        return 8 * self.base_stored / self.held_bytes

    @property
    def new_bpb(self) -> float:
        return 8 * self.new_stored / self.held_bytes

    @property
    def wins(self) -> bool:
        return self.new_stored < self.base_stored


def llm_bytes(model: LanguageModel, blocks: list[bytes]) -> int:
    """Payload bytes of *blocks* as llm frames of *model* (what compaction stores)."""
    from ..codec.llm import LLMCodec

    codec = LLMCodec(model)
    return sum(len(e.payload) for e in codec.encode_many([(b, float("inf")) for b in blocks]))


def train_model(base_path: Path, blocks: list[bytes], *, steps: int, held_fraction: float = 0.1,
                held_max: int = 128 << 10, progress: Callable[[int], None] | None = None,
                notes: dict | None = None, rival: bytes | None = None) -> Outcome:
    """Fine-tune the model at *base_path* on *blocks*; measure it on held-back
    ones against *rival* (a model file; default: the base model)."""
    from ..model.modelfile import LanguageModel
    from .floats import FLOAT_NAME, load_float_for
    from .tune import finetune

    base = LanguageModel.load(base_path)
    float_model = load_float_for(base, base_path.with_name(FLOAT_NAME))
    train, held = split(blocks, held_fraction, held_max)
    data = finetune(base, float_model, train, steps=steps, progress=progress,
                    notes={"sample_bytes": sum(map(len, train)), **(notes or {})})
    rival_model = LanguageModel.from_bytes(rival) if rival else base
    return Outcome(data, sum(map(len, train)), sum(map(len, held)),
                   llm_bytes(rival_model, held), llm_bytes(LanguageModel.from_bytes(data), held))


def register(store: Store, model: bytes) -> list[bytes]:
    """Keep *model* in the store, first among the encoding models, beside the
    store's original model (earlier trained ones stay for decoding only).
    Returns the encoding models' short ids."""
    from ..model import model_id

    short = model_id(model)[:8]

    def txn(t) -> list[bytes]:
        enc = t.encode_models()
        original = enc[-1:] if enc else []
        t.put_model(short, model)
        ids = [short] + [m for m in original if m != short]
        t.set_encode_models(ids)
        return ids
    return store.write(txn)


def generated_logs(seed: int, lines: int) -> bytes:
    """Synthetic web-server logs: a homogeneous archive the shipped model never
    saw (``bench/train.py`` and the tests measure ``llmfs train`` on them)."""
    r = random.Random(seed)
    out, t = [], 1_700_000_000
    for _ in range(lines):
        t += r.randint(0, 3)
        out.append(f"2026-11-{t % 28 + 1:02d}T{t % 24:02d}:{t % 60:02d}:{t * 7 % 60:02d}Z "
                   f"{r.choice(['INFO', 'INFO', 'WARN', 'DEBUG'])} web[{r.randint(1000, 1099)}]: "
                   f"user={r.choice(['alice', 'bob', 'carol', 'dave'])} "
                   f"method={r.choice(['GET', 'POST'])} "
                   f"path={r.choice(['/api/v1/items', '/login', '/static/app.js'])}/"
                   f"{r.randint(1, 9999)} status={r.choice([200, 200, 201, 304, 404, 500])} "
                   f"bytes={r.randint(100, 99999)} ms={r.randint(1, 900)}\n")
    return "".join(out).encode()
