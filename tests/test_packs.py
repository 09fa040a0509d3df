"""Packs: cold frames many to an LMDB value.  They read back exactly, the
space split adds up, a mostly dead pack is rewritten, a pack rewrite under
reads and writes on a real mount and kill -9 at any point lose nothing,
and stores of the format before packs read and upgrade."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from llmfs.codec.frame import Codec
from llmfs.codec.plain import decode_plain, fast_frame
from llmfs.fsck import check
from llmfs.stats import collect
from llmfs.store import FORMAT_VERSION, Store
from llmfs.store.schema import ROOT_INO, Inode, block_key

from conftest import Mounted
from test_compactor import cold_store, fsck_clean, live, wait_for

FAST = "compact_after_s=0,compact_interval_s=0.1,compact_batch=16,compact_yield_s=0," \
       "compact_cpu_share=1,learn=false,pack_kib=16"


def blocks(n: int, seed: int) -> list[bytes]:
    """*n* 4 KiB blocks that zstd shrinks by about half (frames of ~2 KiB)."""
    rng = random.Random(seed)
    return [bytes(rng.randrange(16) for _ in range(4096)) for _ in range(n)]


def filled_store(path: Path, raws: list[bytes]) -> tuple[Store, list[bytes]]:
    """A store with one file per block of *raws*, every frame done by the compactor."""
    s = Store.create(path, 4096, {})
    keys = [block_key(r) for r in raws]

    def fill(t) -> None:
        for i, (k, r) in enumerate(zip(keys, raws)):
            ino = t.new_ino()
            t.put_inode(ino, Inode(0o100644, 0, 0, 1, size=len(r), nblocks=1))
            t.add_entry(ROOT_INO, b"f%d" % i, ino)
            t.set_block(ino, 0, k, fast_frame(r))
            t.mark_tried(k, b"tag12345")
    s.write(fill)
    return s, keys


def unlink(t, ino: int) -> None:
    t.del_entry(ROOT_INO, b"f%d" % (ino - 2))
    t.drop_inode(ino)


def test_packed_frames_read_back_and_the_space_split_adds_up(tmp_path):
    raws = blocks(150, 1)
    s, keys = filled_store(tmp_path / "store", raws)
    loose = s.read(lambda t: {k: t.frame(k) for k in keys})
    first = s.write(lambda t: t.pack_loose(64 << 10))     # ~2 KiB frames, 32 a pack
    assert first == 4 * 32 and collect(s).packs == 4           # 4 packs at most at a time
    assert s.write(lambda t: t.pack_loose(64 << 10)) == 0     # a pack only once full ...
    assert s.write(lambda t: t.pack_loose(64 << 10, flush=True)) == 22   # ... or flushed
    st = collect(s)
    assert st.packed_frames == 150 and st.packs == 5
    assert s.read(lambda t: list(t.scan("blocks"))) == []            # nothing loose
    assert s.read(lambda t: {k: t.frame(k) for k in keys}) == loose  # same frames
    assert all(decode_plain(s.read(lambda t: t.frame(k))) == r for k, r in zip(keys, raws))
    sp = st.space
    assert sp["frames"] == sum(map(len, loose.values())) == st.stored_bytes
    assert sum(v for k, v in sp.items() if k != "file") == sp["file"]
    assert 0 <= sp["page_slack"] < 0.05 * sp["frames"] and sp["pack_slack"] < 0.02 * sp["frames"]
    assert check(s).problems == []
    s.close()


def test_a_mostly_dead_pack_is_rewritten_and_an_empty_one_goes(tmp_path):
    raws = blocks(24, 2)
    s, keys = filled_store(tmp_path / "store", raws)
    s.write(lambda t: t.pack_loose(1 << 30, flush=True))              # one pack of all 24
    assert collect(s).packs == 1
    inos = list(range(2, 26))
    s.write(lambda t: [unlink(t, ino) for ino in inos[:10]])
    assert s.read(lambda t: list(t.scan("sparse"))) == []             # 14 of 24 live
    s.write(lambda t: [unlink(t, ino) for ino in inos[10:14]])
    assert len(s.read(lambda t: list(t.scan("sparse")))) == 1         # 10 of 24: rewrite it
    assert check(s).problems == []
    assert s.write(lambda t: t.repack_sparse()) == 10
    assert collect(s).packs == 0 and collect(s).packed_frames == 0    # live ones loose again
    assert s.write(lambda t: t.pack_loose(1 << 30, flush=True)) == 10
    assert [decode_plain(s.read(lambda t: t.frame(k))) for k in keys[14:]] == raws[14:]
    assert all(s.read(lambda t: t.frame(k)) is None for k in keys[:14])
    s.write(lambda t: [unlink(t, ino) for ino in inos[14:]])
    assert s.read(lambda t: (list(t.scan("packs")), list(t.scan("packfill")),
                             list(t.scan("packidx")))) == ([], [], [])
    assert check(s).problems == []
    s.close()


def test_fsck_recounts_a_wrong_fill_and_reports_a_damaged_index_record(tmp_path):
    raws = blocks(12, 3)
    s, keys = filled_store(tmp_path / "store", raws)
    s.write(lambda t: t.pack_loose(1 << 30, flush=True))
    with s.env.begin(write=True) as txn:                             # bit rot in two records
        for db, key in (("packfill", next(iter(txn.cursor(db=s.dbs["packfill"])))[0]),
                        ("packidx", keys[5])):
            v = bytearray(txn.get(key, db=s.dbs[db]))
            v[2] ^= 0xFF
            txn.put(key, bytes(v), db=s.dbs[db])
    assert s.read(lambda t: t.frame(keys[5])) is None                # EIO, never wrong bytes
    rep = check(s)
    assert any("fill record" in p for p in rep.problems), rep.problems
    assert any(keys[5].hex()[:16] in p for p in rep.problems), rep.problems
    rep = check(s, repair=True)
    assert rep.lost_blocks == 1
    assert check(s).problems == []
    assert [decode_plain(s.read(lambda t: t.frame(k))) for k in keys[6:]] == raws[6:]
    s.close()


def _reader(m: Mounted, files: dict[str, bytes], gen: dict[str, int], stop: threading.Event,
            errors: list) -> None:
    """Reads every file again and again; a file whose generation stayed the
    same, and even (no replacement under way), over a read must read right."""
    while not stop.is_set():
        for name in list(files):
            g0 = gen[name]
            data = files.get(name)
            try:
                got = m.path(name).read_bytes()
            except FileNotFoundError:
                continue
            if got != data and g0 == gen[name] and g0 % 2 == 0:
                errors.append(name)


def test_pack_rewrites_under_concurrent_reads_and_writes_on_a_mount(tmp_path):
    files = {f"f{i}": b"".join(blocks(3, 100 + i)) for i in range(30)}
    m = cold_store(tmp_path, files, FAST)
    m.start()
    stop, errors, gen = threading.Event(), [], dict.fromkeys(files, 0)
    reader = threading.Thread(target=_reader, args=(m, files, gen, stop, errors))
    try:
        wait_for(lambda: live(m).get("compact_packed", 0) >= 60)
        reader.start()
        rng = random.Random(5)
        for name in rng.sample(sorted(files), 20):            # most of every pack dies
            gen[name] += 1                                    # odd: being replaced
            if rng.random() < 0.5:
                os.unlink(m.path(name))
                del files[name]
            else:
                new = b"".join(blocks(2, rng.randrange(1 << 30)))
                m.path(name).write_bytes(new)
                files[name] = new
            gen[name] += 1
        wait_for(lambda: live(m).get("compact_repacked", 0) > 0)
        time.sleep(1.0)
    finally:
        stop.set()
        if reader.is_alive():
            reader.join()
        m.stop()
    assert errors == []
    fsck_clean(m.store)
    m.options = "compact=false"
    m.start()
    try:
        assert sorted(os.listdir(m.mnt)) == sorted(files)
        assert all(m.path(n).read_bytes() == d for n, d in files.items())
    finally:
        m.stop()
    s = Store(m.store, readonly=True)
    st = collect(s)
    s.close()
    assert st.packs >= 1 and st.packed_frames >= 20


def test_kill_9_while_packing_and_rewriting_loses_nothing(tmp_path):
    m = Mounted(tmp_path, options=FAST)
    m.mkfs("--block-size", "4096")
    m.start()
    rng = random.Random(7)
    files: dict[str, bytes] = {}
    try:
        for i in range(40):
            files[f"f{i}"] = b"".join(blocks(2, 200 + i))
            m.path(f"f{i}").write_bytes(files[f"f{i}"])
        wait_for(lambda: live(m).get("compact_packed", 0) >= 32)   # packs to rewrite
        for i in range(0, 40, 4):                          # three in four die: rewrites start
            for name in (f"f{i}", f"f{i + 1}", f"f{i + 2}"):
                os.unlink(m.path(name))
                del files[name]
        wait_for(lambda: live(m).get("compact_repacked", 0) > 0)
        for i in range(40, 60):                            # more to compact and pack meanwhile
            files[f"f{i}"] = b"".join(blocks(2, 200 + i))
            m.path(f"f{i}").write_bytes(files[f"f{i}"])
        for round_ in range(6):
            time.sleep(rng.uniform(0.2, 1.5))           # packing / rewriting under way
            for name in rng.sample(sorted(files), 6):     # and more to rewrite
                if rng.random() < 0.5:
                    os.unlink(m.path(name))
                    del files[name]
                else:
                    files[name] = b"".join(blocks(2, rng.randrange(1 << 30)))
                    with open(m.path(name), "wb") as f:
                        f.write(files[name])
                        os.fsync(f.fileno())
            time.sleep(rng.uniform(0.0, 0.5))
            m.kill()                                      # kill -9, no unmount
            m.start()
            assert sorted(os.listdir(m.mnt)) == sorted(files), round_
            assert all(m.path(n).read_bytes() == d for n, d in files.items()), round_
    finally:
        m.stop()
    fsck_clean(m.store)


def test_a_store_of_format_2_reads_and_is_upgraded(tmp_path):
    """Format 2 had no packs: it opens read-only without its pack tables
    (``llmfs stats``, fsck), and the first writable open makes it format 3."""
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs()
    m.start()
    data = os.urandom(100_000) + b"text " * 30_000
    m.path("f").write_bytes(data)
    m.stop()
    s = Store(m.store)
    heads = s.read(lambda t: list(t.frame_index()))
    raw = {k for k, h, _ in heads if h.codec == Codec.RAW}  # the random part: incompressible
    done = next(k for k, h, _ in heads if h.codec != Codec.RAW)
    s.write(lambda t: t.mark_tried(done, b"oldmodel"))      # compacted by an older llmfs
    with s.env.begin(write=True) as txn:
        for name in ("packs", "packidx", "packfill", "unpacked", "sparse", "dicts"):
            txn.drop(s.dbs[name], delete=True)
        txn.put(b"format", b"2", db=s.dbs["meta"])
    s.close()
    for args in (("stats", str(m.store)), ("fsck", str(m.store))):
        r = subprocess.run([sys.executable, "-m", "llmfs.cli", *args], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    s = Store(m.store, readonly=True)
    assert s.read(lambda t: t.meta("format")) == "2" and collect(s).packs == 0
    s.close()
    s = Store(m.store)                                      # the first writable open
    assert raw and set(s.read(lambda t: [k for k, _ in t.scan("unpacked")])) == {done} | raw
    s.close()
    m.options = "compact_after_s=0,compact_interval_s=0.1,learn=false,pack_kib=4"
    m.start()
    try:
        assert m.path("f").read_bytes() == data
        wait_for(lambda: live(m).get("compact_packed", 0) >= 1)
        assert m.path("f").read_bytes() == data
    finally:
        m.stop()
    s = Store(m.store, readonly=True)
    assert s.read(lambda t: t.meta("format")) == str(FORMAT_VERSION) == "3"
    s.close()
    fsck_clean(m.store)


def test_cold_raw_blocks_are_packed_without_being_coded(tmp_path):
    data = os.urandom(10 * 4096)                          # nothing shrinks it: raw frames
    m = cold_store(tmp_path, {"noise": data}, FAST)
    m.start()
    try:
        wait_for(lambda: live(m).get("compact_packed", 0) >= 8)   # two packs of 16 KiB
        assert live(m).get("compact_tried", 0) == 0        # nothing was coded
        assert m.path("noise").read_bytes() == data
    finally:
        m.stop()
    fsck_clean(m.store)
