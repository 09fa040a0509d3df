"""Data safety: write-back errors reach close() and fsync(), dead model workers
heal, a killed daemon's mount comes back with no manual step, odd paths work
for every command, and bit rot in the data file never reads as wrong bytes."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mfusepy import FuseOSError

from llmfs.codec.policy import BlockCodec
from llmfs.codec.workers import LLMPool, WorkerError
from llmfs.compactor import recompress
from llmfs.config import Config
from llmfs.fs.operations import LLMFS
from llmfs.model import DEFAULT_MODEL, ModelFile, read_model_file
from llmfs.store import FORMAT_VERSION, Store
from llmfs.store.schema import fmap_key, ino_key

from conftest import Mounted, processes, tmpfs

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = (ROOT / "llmfs" / "samples" / "GPL-3.txt").read_bytes()
BS = 4096


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmfs.cli", *args], capture_output=True,
                          text=True, **kw)


def live(m: Mounted) -> dict:
    return json.loads(os.getxattr(m.mnt, "user.llmfs.stats"))


# -- write-back errors -------------------------------------------------------------
def test_close_reports_disk_full_for_files_closed_concurrently(tmp_path):
    """A close() that returned 0 means the data is in the store: after a
    remount every such file reads back whole; the others got ENOSPC."""
    with tmpfs(tmp_path / "disk", "12m") as disk:
        m = Mounted(disk)
        m.mkfs()
        m.start()
        try:
            data = {f"f{i:02d}": os.urandom(900_000) for i in range(24)}   # ~21 MB, 12 MB disk
            outcome: dict[str, int] = {}

            def put(name: str) -> None:
                try:
                    with open(m.path(name), "wb") as f:
                        f.write(data[name])
                    outcome[name] = 0
                except OSError as e:
                    outcome[name] = e.errno

            threads = [threading.Thread(target=put, args=(n,)) for n in data]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ok = sorted(n for n, e in outcome.items() if e == 0)
            failed = sorted(n for n, e in outcome.items() if e != 0)
            assert ok and failed, outcome
            assert {outcome[n] for n in failed} == {errno.ENOSPC}, outcome
            assert live(m)["writeback_errors"] >= len(failed)
            for n in failed:              # the program gave up on these: free the space
                os.unlink(m.path(n))
            m.stop()
            m.start()
            assert sorted(os.listdir(m.mnt)) == ok
            for n in ok:
                assert m.path(n).read_bytes() == data[n], n
        finally:
            m.stop()


def test_fsync_reports_disk_full_and_a_later_close_commits(tmp_path):
    """Data that failed to commit stays buffered: once space is free again,
    the next fsync commits it and nothing written is lost."""
    with tmpfs(tmp_path / "disk", "12m") as disk:
        m = Mounted(disk, options="flush_interval_s=3600")
        m.mkfs()
        m.start()
        try:
            filler = os.urandom(9 << 20)
            m.path("filler").write_bytes(filler)
            data = os.urandom(3 << 20)
            fd = os.open(m.path("f"), os.O_WRONLY | os.O_CREAT)
            try:
                assert os.write(fd, data) == len(data)       # buffered: no error yet
                with pytest.raises(OSError) as e:
                    os.fsync(fd)
                assert e.value.errno == errno.ENOSPC
                os.unlink(m.path("filler"))
                os.fsync(fd)                                 # the same buffer, now committed
            finally:
                os.close(fd)
            m.stop()
            m.start()
            assert m.path("f").read_bytes() == data
        finally:
            m.stop()


def test_a_full_store_can_be_emptied_and_written_again(tmp_path):
    """Even a delete needs free pages (LMDB copies what it changes): the spare
    file gives them on a full disk, and freed space serves the next write."""
    with tmpfs(tmp_path / "disk", "12m") as disk:
        m = Mounted(disk)
        m.mkfs()
        m.start()
        try:
            names = []
            with pytest.raises(OSError) as e:
                for i in range(100):
                    names.append(f"f{i}")
                    with open(m.path(names[-1]), "wb") as f:
                        f.write(os.urandom(1 << 20))
            assert e.value.errno == errno.ENOSPC and len(names) > 5
            for name in names:
                os.unlink(m.path(name))
            assert os.listdir(m.mnt) == []
            data = os.urandom(4 << 20)
            m.path("again").write_bytes(data)
            m.stop()
            m.start()
            assert m.path("again").read_bytes() == data
        finally:
            m.stop()


# -- model workers -----------------------------------------------------------------
def _workers(pid: int) -> set[int]:
    """Model worker processes (multiprocessing spawn children) of *pid*."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return set(processes(b"spawn_main", children))


def _cpu_ticks(pids: set[int]) -> int:
    """CPU time (user + system clock ticks) the processes *pids* have used."""
    return sum(sum(map(int, Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
               for p in pids)


def _wait_workers(pid: int, timeout: float = 60) -> set[int]:
    end = time.time() + timeout
    while not (found := _workers(pid)):
        assert time.time() < end, "no model worker appeared"
        time.sleep(0.05)
    return found


def test_killed_model_worker_is_restarted_and_reads_go_on(tmp_path, model):
    m = Mounted(tmp_path, options="readahead_blocks=0,decode_workers=1,compact=false")
    m.mkfs("--block-size", str(BS))
    m.start()
    files = {"a": SAMPLE[:2 * BS], "b": SAMPLE[2 * BS:4 * BS], "c": SAMPLE[4 * BS:8 * BS]}
    for name, data in files.items():
        m.path(name).write_bytes(data)
    m.stop()
    s = Store(m.store)
    keys = s.read(lambda t: list(t.stored_blocks()))
    assert recompress(s, BlockCodec(model), keys)["llm"] == len(keys) == 8
    s.close()

    m.start()
    try:
        assert m.path("a").read_bytes() == files["a"]
        idle = _wait_workers(m.proc.pid)
        for pid in idle:                                     # killed while idle
            os.kill(pid, signal.SIGKILL)
        assert m.path("b").read_bytes() == files["b"]
        fresh = _wait_workers(m.proc.pid)
        assert not fresh & idle
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(m.path("c").read_bytes()))
        while (before := _cpu_ticks(fresh)) != (time.sleep(0.3) or _cpu_ticks(fresh)):
            pass                                             # the new workers are idle
        reader.start()
        end = time.time() + 30
        while _cpu_ticks(fresh) == before:                   # until a worker is decoding
            assert time.time() < end, "the workers never started decoding"
            time.sleep(0.01)
        assert reader.is_alive()
        for pid in fresh:                                    # killed mid-batch
            os.kill(pid, signal.SIGKILL)
        reader.join(120)
        assert got == [files["c"]]
        assert live(m).get("read_errors", 0) == 0
    finally:
        m.stop()
    assert m.log.read_text().count("a model worker died") == 2


def test_pool_gives_up_on_a_batch_that_kills_its_workers_then_works():
    pool = LLMPool(ModelFile(read_model_file(DEFAULT_MODEL)), 1)
    try:
        with pytest.raises(WorkerError):
            pool._map(os._exit, [3])                        # the worker dies on this item
        assert pool.restarts == 2
        enc = pool.encode_many([(SAMPLE[:2000], 8.0)])[0]
        assert enc is not None and pool.decode_many([enc])[0] is not None
    finally:
        pool.close()


def running(pid: int, wait: float = 10) -> bool:
    """Whether process *pid* still runs after up to *wait* seconds (a zombie
    has ended; Process.is_alive cannot tell once another thread reaped it)."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.1)
    return True


def test_aborting_a_pool_while_a_batch_starts_its_workers_never_hangs():
    """An unmount aborts the compactor's pool at any moment, also while a batch
    is still spawning the workers: close(abort=True) must return promptly and
    leave no worker behind, wherever in start-up it finds them."""
    data = read_model_file(DEFAULT_MODEL)
    for delay in (0.0, 0.2, 1.0, 3.0):
        pool = LLMPool(ModelFile(data), 2)
        errors: list[BaseException] = []

        def encode() -> None:
            try:
                pool.encode_many([(SAMPLE[:3000], 8.0)] * 4)
            except BaseException as e:          # the abort fails the batch, as intended
                errors.append(e)
        t = threading.Thread(target=encode)
        t.start()
        time.sleep(delay)
        procs = list((pool._ex._processes or {}).values())
        t0 = time.monotonic()
        pool.close(abort=True)
        assert time.monotonic() - t0 < 20, delay
        t.join(30)
        assert not t.is_alive(), delay
        assert not [p.pid for p in procs if running(p.pid)], delay


def test_a_decoder_failure_is_eio_naming_inode_and_offset(tmp_path, caplog):
    Store.create(tmp_path / "s", BS, {}).close()
    ops = LLMFS(str(tmp_path / "s"), Config(compact=False))
    ops.init("/")
    try:
        fh = ops.create("/f", 0o644)
        ops.write("/f", SAMPLE[:3 * BS], 0, fh)
        ops.flush("/f", fh)
        ino = ops.store.read(lambda t: t.lookup(1, b"f"))

        def broken(frames):
            raise WorkerError("model workers died twice on one batch")

        ops.reader.decode = broken
        with caplog.at_level(logging.ERROR), pytest.raises(FuseOSError) as e:
            ops.read("/f", 100, BS + 10, fh)
        assert e.value.errno == errno.EIO
        assert f"inode {ino} offset {BS}: decoding" in caplog.text
        ops.release("/f", fh)
    finally:
        ops.destroy("/")


# -- crash recovery ----------------------------------------------------------------
def test_mount_after_kill_9_needs_no_manual_step(tmp_path):
    m = Mounted(tmp_path)
    m.mkfs()
    m.start()
    data = os.urandom(200_000)
    with open(m.path("f"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(m.path("open-unlinked"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"x" * 1000)
    os.unlink(m.path("open-unlinked"))
    m.kill()                                                  # no unmount, no cleanup
    with pytest.raises(OSError) as e:
        os.stat(m.mnt)
    assert e.value.errno == errno.ENOTCONN
    try:
        os.close(fd)
    except OSError:
        pass
    m.start()                                                 # plain `llmfs mount -f`
    try:
        assert m.path("f").read_bytes() == data
        assert [n for n in os.listdir(m.mnt) if n != "f"] == []
    finally:
        m.stop()
    r = cli("fsck", str(m.store))
    assert r.returncode == 0, r.stdout + r.stderr


# -- odd paths ---------------------------------------------------------------------
def test_paths_with_spaces_commas_quotes_and_non_ascii_work_for_every_command(tmp_path):
    odd = tmp_path / "a dir, with 'quotes\" and é"
    odd.mkdir()
    store, mnt = odd / "st ore,1", odd / "mount point, ü"
    mnt.mkdir()
    assert cli("mkfs", str(store)).returncode == 0
    r = cli("mount", str(store), str(mnt), "-o", "cache_mib=64")   # daemonises
    assert r.returncode == 0, r.stderr
    try:
        data = SAMPLE[:100_000]
        (mnt / "f").write_bytes(data)
        st = cli("stats", str(mnt), "--json")
        assert st.returncode == 0, st.stderr
        out = json.loads(st.stdout)
        assert out["live"]["open_files"] == 0 and out["files"] == 1
        pid = int((store / "llmfs.lock").read_text())
        um = cli("umount", str(mnt))
        assert um.returncode == 0, um.stderr
        assert not Path(f"/proc/{pid}").exists()               # umount waited for the daemon
    finally:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
    fs = cli("fsck", str(store), "--scrub")
    assert fs.returncode == 0 and "clean" in fs.stdout, fs.stdout + fs.stderr
    helper = subprocess.run(["sh", str(ROOT / "systemd" / "mount.llmfs"), str(store), str(mnt),
                             "-o", "defaults,nofail,ro"], capture_output=True, text=True,
                            env={**os.environ, "LLMFS": str(Path(sys.executable).parent / "llmfs")})
    assert helper.returncode == 0, helper.stderr
    try:
        assert (mnt / "f").read_bytes() == data
        with pytest.raises(OSError) as e:
            (mnt / "g").write_bytes(b"read-only")
        assert e.value.errno == errno.EROFS
    finally:
        assert cli("umount", str(mnt)).returncode == 0


# -- bit rot -----------------------------------------------------------------------
def test_flipped_bytes_in_the_data_file_read_as_eio_never_wrong_and_fsck_reports(tmp_path):
    m = Mounted(tmp_path)
    m.mkfs("--block-size", str(BS))
    m.start()
    files = {f"f{i}": os.urandom(2000) * 8 for i in range(6)}   # zstd frames, 4 blocks each
    for name, data in files.items():
        m.path(name).write_bytes(data)
    m.stop()
    s = Store(m.store)
    frames = s.read(lambda t: [f for _, f in t.all_frames()])
    s.close()
    raw = bytearray((m.store / "data.mdb").read_bytes())
    hit = 0
    for frame in frames[::3]:                        # rot in every third stored block
        at = raw.find(frame)
        assert at >= 0
        for off in (len(frame) // 2, len(frame) - 1):
            raw[at + off] ^= 0x5A
        hit += 1
    (m.store / "data.mdb").write_bytes(bytes(raw))

    m.start()
    try:
        eio = 0
        for name, data in files.items():
            with open(m.path(name), "rb") as f:
                for off in range(0, len(data), BS):
                    try:
                        got = os.pread(f.fileno(), BS, off)
                    except OSError as e:
                        assert e.errno == errno.EIO
                        eio += 1
                        continue
                    assert got == data[off:off + BS], (name, off)
        assert eio >= hit
    finally:
        m.stop()
    r = cli("fsck", str(m.store), "--scrub")
    assert r.returncode == 4, r.stdout + r.stderr
    assert r.stdout.count("checksum") + r.stdout.count("damaged") >= hit, r.stdout


def _flip(s: Store, db: str, key: bytes, at: int = 0) -> None:
    """Flip the bits of one byte of a stored value, as bit rot would."""
    with s.env.begin(write=True) as txn:
        v = bytearray(txn.get(key, db=s.dbs[db]))
        v[at] ^= 0xFF
        txn.put(key, bytes(v), db=s.dbs[db])


def test_damaged_metadata_reads_as_eio_and_fsck_repairs_it(tmp_path):
    """Bit rot in the records that say where a file's bytes are: every read
    gives the right bytes or EIO, fsck names each damage and repairs it."""
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs("--block-size", str(BS))
    m.start()
    files = {n: os.urandom(3 * BS) for n in "abce"}
    for name, data in files.items():
        m.path(name).write_bytes(data)
    with open(m.path("d"), "wb") as f:                        # blocks 0 and 2, a hole at 1
        f.write(files["a"][:BS])
        f.seek(2 * BS)
        f.write(files["b"][:BS])
    m.stop()
    s = Store(m.store)
    ino = {n: s.read(lambda t: t.lookup(1, n.encode())) for n in "abcde"}
    _flip(s, "inodes", ino_key(ino["a"]), 8)                 # a's size
    _flip(s, "dirents", ino_key(1) + b"b")                   # b's entry points elsewhere
    _flip(s, "fmap", fmap_key(ino["c"], 1), 5)               # c's block 1 key
    with s.env.begin(write=True) as txn:                     # d's block 0 entry moves away
        v = txn.pop(fmap_key(ino["d"], 0), db=s.dbs["fmap"])
        txn.put(fmap_key(ino["d"] | 1 << 25, 0), v, db=s.dbs["fmap"])
    s.close()

    m.start()
    try:
        def eio(fn) -> None:
            with pytest.raises(OSError) as e:
                fn()
            assert e.value.errno == errno.EIO

        eio(lambda: m.path("a").stat())
        eio(lambda: m.path("b").read_bytes())
        with open(m.path("c"), "rb") as f:
            assert os.pread(f.fileno(), BS, 0) == files["c"][:BS]
            eio(lambda: os.pread(f.fileno(), BS, BS))
            assert os.pread(f.fileno(), BS, 2 * BS) == files["c"][2 * BS:]
        with open(m.path("d"), "rb") as f:
            eio(lambda: os.pread(f.fileno(), BS, 0))          # not a hole of zeros
            assert os.pread(f.fileno(), BS, 2 * BS) == files["b"][:BS]
        assert m.path("e").read_bytes() == files["e"]
    finally:
        m.stop()
    r = cli("fsck", str(m.store))
    assert r.returncode == 4, r.stdout + r.stderr
    for what in (f"inode {ino['a']}: damaged record", "entry b'b' in directory 1: damaged record",
                 f"inode {ino['c']} block 1: damaged block map entry",
                 f"block map of missing inode {ino['d'] | 1 << 25}",
                 f"inode {ino['d']}: block count 2, has 1"):
        assert what in r.stdout, r.stdout
    assert cli("fsck", str(m.store), "--repair").returncode == 1
    r = cli("fsck", str(m.store))
    assert r.returncode == 0, r.stdout
    m.start()
    try:
        assert sorted(os.listdir(m.mnt)) == ["c", "d", "e", "lost+found"]
        assert m.path("c").read_bytes() == files["c"][:BS] + bytes(BS) + files["c"][2 * BS:]
        assert m.path("e").read_bytes() == files["e"]
        assert m.path("lost+found", f"#{ino['b']}").read_bytes() == files["b"]
    finally:
        m.stop()


def test_a_damaged_model_record_is_reported_and_a_shipped_one_restored(tmp_path):
    assert cli("mkfs", str(tmp_path / "m")).returncode == 0
    s = Store(tmp_path / "m")
    (mid,) = s.read(lambda t: t.model_ids())
    _flip(s, "models", mid, 1000)
    assert s.read(lambda t: t.models()) == {}
    s.close()
    r = cli("fsck", str(tmp_path / "m"))
    assert r.returncode == 4 and f"model {mid.hex()}: damaged record" in r.stdout, r.stdout
    assert cli("fsck", str(tmp_path / "m"), "--repair").returncode == 1
    s = Store(tmp_path / "m", readonly=True)
    assert list(s.read(lambda t: t.models())) == [mid]
    s.close()


def test_a_store_of_format_1_reads_and_is_upgraded(tmp_path):
    """Format 1 had no seals: its records are taken as they are, and the first
    writable open marks the store of the current format (an older llmfs then refuses it)."""
    m = Mounted(tmp_path)
    m.mkfs()
    m.start()
    data = os.urandom(200_000)
    m.path("f").write_bytes(data)
    os.mkdir(m.path("d"))
    m.stop()
    s = Store(m.store)
    with s.env.begin(write=True) as txn:                     # strip every seal: format 1
        for db in ("inodes", "dirents", "fmap"):
            for k, v in list(txn.cursor(db=s.dbs[db])):
                txn.put(k, v[:-4], db=s.dbs[db])
        txn.put(b"format", b"1", db=s.dbs["meta"])
    s.close()
    m.start()
    try:
        assert m.path("f").read_bytes() == data
        m.path("d", "g").write_bytes(b"new")
    finally:
        m.stop()
    s = Store(m.store, readonly=True)
    assert s.read(lambda t: t.meta("format")) == str(FORMAT_VERSION)
    s.close()
    r = cli("fsck", str(m.store))
    assert r.returncode == 0, r.stdout
    m.start()
    try:
        assert m.path("f").read_bytes() == data and m.path("d", "g").read_bytes() == b"new"
    finally:
        m.stop()
