"""What a store holds: logical vs stored bytes, per codec, dedup, models.

Computed by one read transaction over the store (a consistent snapshot, also
while a daemon serves it), so the numbers are exactly what the store holds.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from .codec.frame import Codec, Frame, FrameError
from .model import model_id, model_metadata, shipped_model
from .store import Store, Txn
from .store.schema import unpack_ref


@dataclass
class CodecRow:
    blocks: int = 0
    logical: int = 0     # raw bytes of the stored (unique) blocks
    stored: int = 0      # frame bytes, headers included

    @property
    def bpb(self) -> float:
        return 8 * self.stored / self.logical if self.logical else 0.0


@dataclass
class StoreStats:
    files: int = 0
    directories: int = 0
    logical_bytes: int = 0          # sum of regular file sizes (holes included)
    mapped_bytes: int = 0           # raw bytes of all block references (holes excluded)
    unique_bytes: int = 0           # raw bytes of the unique stored blocks
    stored_bytes: int = 0           # frame bytes
    damaged_frames: int = 0
    codecs: dict[str, CodecRow] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)   # short id hex -> llm blocks
    model_about: dict[str, str] = field(default_factory=dict)   # short id hex -> where from
    learn_last: dict = field(default_factory=dict)   # the daemon's last store-learning run
    learn_pending_bytes: int = 0    # compacted since, towards the next run
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def dedup_saved_bytes(self) -> int:
        return self.mapped_bytes - self.unique_bytes

    @property
    def ratio(self) -> float:
        return self.mapped_bytes / self.stored_bytes if self.stored_bytes else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["codecs"] = {k: {**asdict(v), "bpb": round(v.bpb, 4)} for k, v in self.codecs.items()}
        d.update(dedup_saved_bytes=self.dedup_saved_bytes, ratio=round(self.ratio, 4))
        return d


def about_model(data: bytes) -> str:
    """Where a store's model came from, in a line: shipped, or trained when,
    on what, and what it measured (the notes in its file)."""
    path = shipped_model(model_id(data))
    if path is not None:
        return f"shipped ({path.parent.name})"
    try:
        notes = json.loads(model_metadata(data).get("notes", "{}"))
    except ValueError:
        notes = {}
    if "trained_at" in notes:
        return (f"trained {notes['trained_at']} on {notes.get('trained_on', '?')}; held-back "
                f"{notes.get('held_bpb', '?')} bpb (the model before it "
                f"{notes.get('rival_bpb', '?')})")
    if "sample_bytes" in notes:
        return f"trained with llmfs train on {notes['sample_bytes']} bytes"
    return "added by hand"


def collect(store: Store) -> StoreStats:
    return store.read(_collect)


def _collect(t: Txn) -> StoreStats:
    st = StoreStats(codecs={c.name.lower(): CodecRow() for c in Codec})
    for _, inode in t.all_inodes():
        if inode is None:
            continue          # damaged: fsck reports it
        if inode.is_reg:
            st.files += 1
            st.logical_bytes += inode.size
        elif inode.is_dir:
            st.directories += 1
    raw_len: dict[bytes, int] = {}
    models: Counter[str] = Counter()
    for key, frame in t.scan("blocks"):
        try:
            f = Frame.unpack(frame)
        except FrameError:
            st.damaged_frames += 1
            continue
        row = st.codecs[f.codec.name.lower()]
        row.blocks += 1
        row.logical += f.raw_len
        row.stored += len(frame)
        raw_len[key] = f.raw_len
        if f.codec == Codec.LLM:
            models[f.model.hex()] += 1
    for key, ref in t.scan("refs"):
        st.mapped_bytes += raw_len.get(key, 0) * unpack_ref(ref)[0]
    st.unique_bytes = sum(raw_len.values())
    st.stored_bytes = sum(r.stored for r in st.codecs.values())
    st.models = {m.hex(): models.get(m.hex(), 0) for m in t.model_ids()}
    st.model_about = {m.hex(): about_model(d) for m, d in t.models().items()}
    st.learn_last = json.loads(t.meta("learn_last") or "{}")
    st.learn_pending_bytes = int(t.meta("learn_pending_bytes") or 0)
    st.counters = t.counters()
    return st
