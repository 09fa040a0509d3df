"""What a store holds: logical vs stored bytes, per codec, dedup, models,
and where the store file's bytes go.

Computed by one read transaction over the store (a consistent snapshot, also
while a daemon serves it), so the numbers are exactly what the store holds.
The space split counts LMDB pages, so its parts add up to the used part of
``data.mdb``: the frames themselves; pack slack (dead frames in packs and
their directories); page slack (overflow pages rounded up, the leaves that
hold loose frames and the pack values); metadata (inodes, directory
entries, block maps, refcounts, the pack index, ...); models; zstd
dictionaries; and free pages LMDB will reuse.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from .codec.frame import Codec, Head
from .model import model_id, model_metadata, shipped_model
from .store import Store, Txn
from .store.packs import overhead
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
    packs: int = 0
    packed_frames: int = 0          # blocks whose frame is in a pack (the rest are loose)
    space: dict[str, int] = field(default_factory=dict)   # see the module docstring
    dictionaries: dict[str, int] = field(default_factory=dict)   # id hex -> bytes
    dictionary: str = ""            # the one fresh writes and the compactor use

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


def _tally(codecs: dict[str, CodecRow], models: Counter[str], head: Head, length: int) -> None:
    """Count one stored frame (its header fields and stored length)."""
    row = codecs[head.codec.name.lower()]
    row.blocks += 1
    row.logical += head.raw_len
    row.stored += length
    if head.codec == Codec.LLM:
        models[head.model.hex()] += 1


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
    for key, head, length in t.frame_index():
        if head is None:
            st.damaged_frames += 1
            continue
        _tally(st.codecs, models, head, length)
        raw_len[key] = head.raw_len
    for key, ref in t.scan("refs"):
        st.mapped_bytes += raw_len.get(key, 0) * unpack_ref(ref)[0]
    st.unique_bytes = sum(raw_len.values())
    st.stored_bytes = sum(r.stored for r in st.codecs.values())
    st.models = {m.hex(): models.get(m.hex(), 0) for m in t.model_ids()}
    st.model_about = {m.hex(): about_model(d) for m, d in t.models().items()}
    st.learn_last = json.loads(t.meta("learn_last") or "{}")
    st.learn_pending_bytes = int(t.meta("learn_pending_bytes") or 0)
    st.counters = t.counters()
    st.dictionaries = {k.hex(): len(v) for k, v in t.dictionaries().items()}
    st.dictionary = t.meta("dictionary") or ""
    _space(t, st)
    return st


# which sub-databases hold what, for the space split (the rest is metadata)
_FRAME_DBS = ("blocks", "packs")
_OWN_DBS = {"models": "models", "dicts": "dictionaries"}


def _space(t: Txn, st: StoreStats) -> None:
    pages: Counter[str] = Counter()
    psize = t.txn.stat(t.db["meta"])["psize"]
    for name, db in t.db.items():
        if db is None:
            continue
        s = t.txn.stat(db)
        n = s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
        pages["frames" if name in _FRAME_DBS else _OWN_DBS.get(name, "metadata")] += n
    main = t.store.env.stat()
    pages["metadata"] += main["branch_pages"] + main["leaf_pages"] + 2   # + the two meta pages
    slack = 0
    for _, fill in t.pack_fills():
        st.packs += 1
        if fill is None:
            continue
        st.packed_frames += fill.live_frames
        slack += fill.total_bytes - fill.live_bytes + overhead(fill.total_frames)
    used = (t.store.path / "data.mdb").stat().st_size
    st.space = {"frames": st.stored_bytes, "pack_slack": slack,
                "page_slack": pages["frames"] * psize - st.stored_bytes - slack,
                "metadata": pages["metadata"] * psize, "models": pages["models"] * psize,
                "dictionaries": pages["dictionaries"] * psize}
    st.space["free"] = used - sum(st.space.values())   # LMDB's free pages, reused
    st.space["file"] = used


@dataclass
class Usage:
    """What some files of a mounted tree take (``llmfs stats PATH...``, as
    compsize does for btrfs): blocks shared by several of them count once."""
    files: int = 0
    directories: int = 0
    logical_bytes: int = 0          # sum of file sizes (holes included)
    blocks: int = 0                 # block references
    unique_blocks: int = 0
    missing_blocks: int = 0         # damaged or not stored: fsck says why
    codecs: dict[str, CodecRow] = field(default_factory=dict)   # of the unique blocks
    models: dict[str, int] = field(default_factory=dict)        # llm blocks by model

    @property
    def stored_bytes(self) -> int:
        return sum(r.stored for r in self.codecs.values())

    @property
    def unique_bytes(self) -> int:
        return sum(r.logical for r in self.codecs.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["codecs"] = {k: {**asdict(v), "bpb": round(v.bpb, 4)} for k, v in self.codecs.items()}
        d.update(stored_bytes=self.stored_bytes, unique_bytes=self.unique_bytes)
        return d


def usage(store: Store, inos: list[int]) -> Usage:
    """The usage of inodes *inos* and everything below the directories among
    them, in one read transaction (committed data: what a daemon still
    buffers is not in the store yet)."""
    u = Usage(codecs={c.name.lower(): CodecRow() for c in Codec})
    models: Counter[str] = Counter()

    def walk(t: Txn) -> None:
        seen_inos: set[int] = set()
        seen_keys: set[bytes] = set()
        todo = list(inos)
        while todo:
            ino = todo.pop()
            if ino in seen_inos:
                continue
            seen_inos.add(ino)
            inode = t.inode(ino)
            if inode is None:
                continue
            if inode.is_dir:
                u.directories += 1
                todo += [child for _, child in t.entries(ino)]
                continue
            if not inode.is_reg:
                continue
            u.files += 1
            u.logical_bytes += inode.size
            for key in t.block_keys(ino, 0, (1 << 64) - 1).values():
                u.blocks += 1
                if key in seen_keys:
                    continue
                seen_keys.add(key)
                found = t.frame_stat(key)
                if found is None:
                    u.missing_blocks += 1
                    continue
                _tally(u.codecs, models, *found)
        u.unique_blocks = len(seen_keys)

    store.read(walk)
    u.models = dict(models)
    return u
