"""Store consistency check and repair (``llmfs fsck``).

Checks, in one read transaction: directory entries point at inodes; every
inode is reachable (or a recorded orphan); link counts; file block maps point
at stored blocks; refcounts equal the references; no unreferenced blocks;
every frame header parses (its own checksum); packed frames are where their
index says and each pack's fill record counts what lives in it.  ``scrub``
also decodes every block and checks the checksum of its raw bytes.  ``repair`` then fixes what
can be fixed in one write transaction: refcounts, link counts, unreferenced
blocks; a missing or undecodable block becomes a hole (reported as lost
data); unreachable inodes are linked into ``/lost+found``.
"""
from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .codec.frame import Codec, Frame, FrameError
from .codec.plain import decode_plain
from .store import DAMAGED, ROOT_INO, Store, Txn
from .store.schema import Inode, ino_of, unpack_ref


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    repaired: int = 0
    lost_blocks: int = 0
    checked_blocks: int = 0

    def add(self, text: str) -> None:
        self.problems.append(text)


@dataclass
class _Scan:
    inodes: dict[int, Inode]
    entries: list[tuple[int, bytes, int]]
    orphans: set[int]
    fmap: list[tuple[int, int, bytes]]
    refs: dict[bytes, tuple[int, int]]
    frames: dict[bytes, int]          # key -> frame size (parsed ones)
    bad_frames: dict[bytes, str]
    bad_inodes: list[int]             # records whose seal does not match
    bad_entries: list[tuple[int, bytes]]
    pack_problems: list[str]


def _scan(t: Txn) -> _Scan:
    inodes, bad_inodes = {}, []
    for ino, inode in t.all_inodes():
        if inode is None:
            bad_inodes.append(ino)
        else:
            inodes[ino] = inode
    entries, bad_entries = [], []
    for parent, name, child in t.all_entries():
        if child is None:
            bad_entries.append((parent, name))
        else:
            entries.append((parent, name, child))
    fmap = list(t.all_block_maps())
    refs = {k: unpack_ref(v) for k, v in t.scan("refs")}
    frames, bad = {}, {}
    for k, f in t.all_frames():
        if f is None:
            bad[k] = "its pack or pack index record is damaged"
            continue
        try:
            Frame.unpack(f)
            frames[k] = len(f)
        except FrameError as e:
            bad[k] = str(e)
    return _Scan(inodes, entries, {o[0] for o in t.orphans()}, fmap, refs, frames, bad,
                 bad_inodes, bad_entries, _pack_problems(t))


def _pack_problems(t: Txn) -> list[str]:
    """Packs whose fill record does not count what lives in them."""
    out = []
    census = t.pack_census()
    for pack, fill in census.items():
        kept = t.fill(pack)
        if fill.live_frames == 0:
            out.append(f"pack {pack}: no live frame left in it")
        elif kept is None:
            out.append(f"pack {pack}: fill record missing or damaged")
        elif (kept.live_bytes, kept.live_frames) != (fill.live_bytes, fill.live_frames):
            out.append(f"pack {pack}: fill record counts {kept.live_frames} frames, "
                       f"{fill.live_frames} live")
    out += [f"pack {p}: fill record of a missing pack" for p, _ in t.pack_fills()
            if p not in census]
    return out


def check(store: Store, repair: bool = False, scrub: bool = False,
          decode_llm: Callable[[list[bytes]], list] | None = None,
          progress: Callable[[int], None] | None = None) -> Report:
    """Check *store*; with *repair* fix what can be fixed.  *decode_llm*
    (frames -> bytes or FrameError each) is needed to scrub llm blocks."""
    rep = Report()
    sc = store.read(_scan)
    bad = dict(sc.bad_frames)
    for k, why in bad.items():
        rep.add(f"block {k.hex()[:16]}: damaged frame ({why})")
    damaged_models = store.read(lambda t: t.damaged_models())
    for text in sc.pack_problems:
        rep.add(text)
    for d in store.read(lambda t: t.damaged_dictionaries()):
        rep.add(f"dictionary {d.hex()}: damaged record; its blocks read as EIO")
    for m in damaged_models:
        rep.add(f"model {m.hex()}: damaged record"
                + (" (a shipped model: --repair restores it)" if _shipped(m) else
                   "; its blocks cannot be decoded until it is added again"))
    for i in sc.bad_inodes:
        rep.add(f"inode {i}: damaged record (its file is lost)")
    for parent, name in sc.bad_entries:
        rep.add(f"entry {name!r} in directory {parent}: damaged record")
    if scrub:   # a block whose model is missing is not lost: it decodes once the model is back
        bad.update({k: why for k, why in
                    _scrub(store, [k for k in sc.frames], decode_llm, rep, progress).items()
                    if "unknown model" not in why})

    links: Counter[int] = Counter()
    subdirs: Counter[int] = Counter()
    dangling = []
    for parent, name, child in sc.entries:
        if child not in sc.inodes or parent not in sc.inodes:
            rep.add(f"entry {name!r} in directory {parent}: points at missing inode {child}")
            dangling.append((parent, name))
            continue
        links[child] += 1
        if sc.inodes[child].is_dir:
            subdirs[parent] += 1
    unreachable = [i for i in sc.inodes if i != ROOT_INO and not links[i] and i not in sc.orphans]
    for i in unreachable:
        rep.add(f"inode {i}: not in any directory")
    nlink_fix = {}
    for i, inode in sc.inodes.items():
        want = (2 + subdirs[i]) if inode.is_dir else links[i] + (i in unreachable)
        if i in sc.orphans and not links[i]:
            continue
        if inode.nlink != want:
            rep.add(f"inode {i}: link count {inode.nlink}, should be {want}")
            nlink_fix[i] = want

    counted: Counter[bytes] = Counter()
    missing, stray = [], []
    for ino, index, key in sc.fmap:
        counted[key] += 1
        if ino not in sc.inodes:
            if ino not in sc.bad_inodes:
                rep.add(f"block map of missing inode {ino}")
                stray.append((ino, index))
            continue
        if key not in sc.frames or key in bad:
            if key == DAMAGED:
                rep.add(f"inode {ino} block {index}: damaged block map entry")
            elif key not in bad:
                rep.add(f"inode {ino} block {index}: block {key.hex()[:16]} is missing")
            missing.append((ino, index, key))
    for key, (n, _) in sc.refs.items():
        if counted[key] != n:
            rep.add(f"block {key.hex()[:16]}: refcount {n}, referenced {counted[key]} times")
    for key in set(sc.frames) - set(sc.refs):
        rep.add(f"block {key.hex()[:16]}: stored but not referenced")
    for key in set(counted) - set(sc.refs):
        if key in sc.frames:
            rep.add(f"block {key.hex()[:16]}: referenced but has no refcount")
    per_file: Counter[int] = Counter(ino for ino, _, _ in sc.fmap)
    for i, inode in sc.inodes.items():
        if inode.nblocks != per_file[i]:
            rep.add(f"inode {i}: block count {inode.nblocks}, has {per_file[i]}")

    if repair and rep.problems:
        dangling += sc.bad_entries
        store.write(lambda t: _repair(t, sc, rep, dangling, unreachable, nlink_fix, missing,
                                      stray, bad, damaged_models))
    return rep


def _shipped(short_id: bytes) -> Path | None:
    """The shipped model file whose id starts with *short_id*, if any."""
    from .model import SHIPPED

    return next((p for p, h in SHIPPED.items() if bytes.fromhex(h)[:8] == short_id), None)


def _scrub(store: Store, keys: list[bytes], decode_llm, rep: Report,
           progress) -> dict[bytes, str]:
    """Decode every block; the keys of the ones that do not give their bytes back."""
    bad: dict[bytes, str] = {}
    llm: list[tuple[bytes, bytes]] = []
    for k in keys:
        frame = store.read(lambda t: t.frame(k))
        if frame is None:
            continue
        if Frame.unpack(frame).codec == Codec.LLM:
            llm.append((k, frame))
            continue
        r = decode_plain(frame)
        rep.checked_blocks += 1
        if progress:
            progress(1)
        if isinstance(r, FrameError):
            bad[k] = str(r)
            rep.add(f"block {k.hex()[:16]}: {r}")
    for i in range(0, len(llm), 32):
        part = llm[i:i + 32]
        if decode_llm is None:
            rep.add(f"{len(llm)} llm blocks not scrubbed (no model)")
            break
        for (k, _), r in zip(part, decode_llm([f for _, f in part])):
            rep.checked_blocks += 1
            if isinstance(r, FrameError):
                bad[k] = str(r)
                rep.add(f"block {k.hex()[:16]}: {r}")
        if progress:
            progress(len(part))
    return bad


def _repair(t: Txn, sc: _Scan, rep: Report, dangling, unreachable, nlink_fix, missing,
            stray, bad, damaged_models) -> None:
    for m in damaged_models:
        path = _shipped(m)
        if path is not None:
            from .model import read_model_file

            t.put_model(m, read_model_file(path))
            rep.repaired += 1
    for i in sc.bad_inodes:   # attributes unknown: the file cannot be served again
        t.drop_inode(i)
        rep.repaired += 1
    for ino, index in stray:
        t.unmap_block(ino, index)
        rep.repaired += 1
    for parent, name in dangling:
        t.del_entry(parent, name)
        rep.repaired += 1
    if unreachable:
        lf = t.lookup(ROOT_INO, b"lost+found")
        if lf is None:
            lf = t.new_ino()
            root = t.inode(ROOT_INO)
            t.put_inode(lf, Inode(stat.S_IFDIR | 0o700, root.uid, root.gid, 2,
                                  atime_ns=root.mtime_ns, mtime_ns=root.mtime_ns,
                                  ctime_ns=root.mtime_ns))
            t.add_entry(ROOT_INO, b"lost+found", lf)
            nlink_fix[ROOT_INO] = nlink_fix.get(ROOT_INO, t.inode(ROOT_INO).nlink) + 1
        for i in unreachable:
            t.add_entry(lf, b"#%d" % i, i)
            if sc.inodes[i].is_dir:
                nlink_fix[lf] = nlink_fix.get(lf, 2) + 1
            rep.repaired += 1
    for i, n in nlink_fix.items():
        inode = t.inode(i)
        if inode is not None:
            inode.nlink = n
            t.put_inode(i, inode)
            rep.repaired += 1
    for ino, index, key in missing:   # the data is gone: make it a hole, say so
        t.unmap_block(ino, index)
        rep.lost_blocks += 1
        rep.repaired += 1
    for key in bad:
        t.drop_block(key)
    counted: Counter[bytes] = Counter(key for _, _, key in t.all_block_maps())
    for key, (n, _) in sc.refs.items():
        if key in bad:
            continue
        if counted[key] == 0:
            t.drop_block(key)
            rep.repaired += 1
        elif counted[key] != n:
            t.set_refcount(key, counted[key])
            rep.repaired += 1
    for key in set(sc.frames) - set(sc.refs) - set(bad):
        if counted[key]:
            t.set_refcount(key, counted[key])
        else:
            t.drop_block(key)
        rep.repaired += 1
    rep.repaired += t.recount_packs()
    per_file: Counter[int] = Counter(ino_of(k[:8]) for k, _ in t.scan("fmap"))
    for i in sc.inodes:
        inode = t.inode(i)
        if inode is not None and inode.nblocks != per_file[i]:
            inode.nblocks = per_file[i]
            t.put_inode(i, inode)
