"""The mounted filesystem, through real system calls on a real FUSE mount."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from llmfs.store import Store

from conftest import Mounted, tmpfs

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
BS = 65536


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(old, new, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def utimensat(path, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    ts = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if libc.utimensat(AT_FDCWD, os.fsencode(path), ts, 0):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def live_stats(m) -> dict:
    return json.loads(os.getxattr(m.mnt, "user.llmfs.stats"))


def test_write_read_overwrite_append(mounted):
    p = mounted.path("f")
    model = bytearray(os.urandom(3 * BS + 123))
    p.write_bytes(model)
    assert p.read_bytes() == model
    with open(p, "r+b") as f:                      # overwrite across a block edge
        f.seek(BS - 10)
        f.write(b"X" * 30)
        model[BS - 10:BS + 20] = b"X" * 30
        f.seek(5)
        f.write(b"small")                          # partial write inside a block
        model[5:10] = b"small"
    with open(p, "ab") as f:                       # append
        f.write(b"tail" * 1000)
        model += b"tail" * 1000
    assert p.read_bytes() == model
    with open(p, "rb") as f:                       # reads at odd offsets
        for off, n in ((0, 1), (BS - 1, 2), (2 * BS + 7, BS), (len(model) - 3, 100)):
            f.seek(off)
            assert f.read(n) == bytes(model[off:off + n])
    assert os.stat(p).st_size == len(model)


def test_data_survives_remount(mounted):
    files = {"a": os.urandom(200_000), "b": b"hello\n" * 50_000, "c": b""}
    for name, data in files.items():
        mounted.path(name).write_bytes(data)
    mounted.stop()
    mounted.start()
    for name, data in files.items():
        assert mounted.path(name).read_bytes() == data


def test_sparse_multi_gb_file(mounted):
    p = mounted.path("sparse")
    with open(p, "wb") as f:
        f.write(b"head")
        f.seek(5 << 30)
        f.write(b"end")
    st = os.stat(p)
    assert st.st_size == (5 << 30) + 3
    assert st.st_blocks * 512 <= 2 * BS            # holes take no space
    with open(p, "rb") as f:
        assert f.read(8) == b"head\0\0\0\0"
        f.seek(3 << 30)
        assert f.read(BS) == bytes(BS)
        f.seek((5 << 30) - 2)
        assert f.read(10) == b"\0\0end"
    mounted.stop()
    mounted.start()
    with open(p, "rb") as f:
        f.seek((5 << 30) - 2)
        assert f.read(10) == b"\0\0end"


def test_truncate(mounted):
    p = mounted.path("t")
    data = os.urandom(2 * BS + 500)
    p.write_bytes(data)
    os.truncate(p, BS + 7)
    assert p.read_bytes() == data[:BS + 7]
    os.truncate(p, 3 * BS)                           # growing exposes zeros, not old bytes
    assert p.read_bytes() == data[:BS + 7] + bytes(3 * BS - BS - 7)
    with open(p, "r+b") as f:
        f.truncate(10)
        f.write(b"")
    assert p.read_bytes() == data[:10]
    with open(p, "wb") as f:                         # O_TRUNC inside open
        f.write(b"new")
    assert p.read_bytes() == b"new"


def test_unlinked_open_file_lives_until_close(mounted):
    p = mounted.path("u")
    p.write_bytes(b"data" * 1000)
    f = open(p, "r+b")
    os.unlink(p)
    assert not p.exists()
    f.write(b"more")
    f.seek(0)
    assert f.read(8) == b"moredata"
    os.ftruncate(f.fileno(), 2)
    os.fchmod(f.fileno(), 0o600)
    st = os.fstat(f.fileno())
    assert st.st_size == 2 and stat.S_IMODE(st.st_mode) == 0o600
    assert "u" not in os.listdir(mounted.mnt)
    f.close()
    mounted.stop()
    s = Store(mounted.store)
    assert s.read(lambda t: (t.orphans(), list(t.stored_blocks()))) == ([], [])
    s.close()


def test_directories_and_links(mounted):
    d = mounted.path("d")
    d.mkdir()
    (d / "sub").mkdir()
    assert os.stat(d).st_nlink == 3 and os.stat(mounted.mnt).st_nlink == 3
    with pytest.raises(OSError) as e:
        d.rmdir()
    assert e.value.errno == errno.ENOTEMPTY
    (d / "sub").rmdir()
    assert os.stat(d).st_nlink == 2
    f = d / "f"
    f.write_bytes(b"x")
    os.link(f, mounted.path("hard"))
    assert os.stat(f).st_nlink == 2 and os.stat(f).st_ino == os.stat(mounted.path("hard")).st_ino
    os.unlink(f)
    assert os.stat(mounted.path("hard")).st_nlink == 1
    os.symlink("some/where", mounted.path("sym"))
    assert os.readlink(mounted.path("sym")) == "some/where"
    assert stat.S_ISLNK(os.lstat(mounted.path("sym")).st_mode)
    assert sorted(os.listdir(mounted.mnt)) == ["d", "hard", "sym"]
    with pytest.raises(OSError) as e:
        os.mkdir(mounted.path("x" * 256))
    assert e.value.errno == errno.ENAMETOOLONG


def test_rename_flags(mounted):
    a, b = mounted.path("a"), mounted.path("b")
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(OSError) as e:
        renameat2(a, b, 1)                             # RENAME_NOREPLACE
    assert e.value.errno == errno.EEXIST
    renameat2(a, b, 2)                                 # RENAME_EXCHANGE
    assert (a.read_bytes(), b.read_bytes()) == (b"B", b"A")
    os.rename(a, b)                                    # replace
    assert b.read_bytes() == b"B" and not a.exists()
    mounted.path("d1").mkdir()
    mounted.path("d2").mkdir()
    (mounted.path("d2") / "x").write_bytes(b"")
    with pytest.raises(OSError) as e:
        os.rename(mounted.path("d1"), mounted.path("d2"))
    assert e.value.errno == errno.ENOTEMPTY
    os.rename(mounted.path("d1"), mounted.path("d2") / "d1")
    assert os.stat(mounted.path("d2")).st_nlink == 3


def test_attributes_and_times(mounted):
    p = mounted.path("f")
    p.write_bytes(b"x")
    os.chmod(p, 0o4711)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4711
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    utimensat(p, (0, UTIME_OMIT), (0, UTIME_NOW))      # keep atime, mtime = now
    st2 = os.stat(p)
    assert st2.st_atime_ns == 1_000_000_123 and st2.st_mtime_ns > 2_000_000_456
    os.mkfifo(mounted.path("fifo"))
    assert stat.S_ISFIFO(os.stat(mounted.path("fifo")).st_mode)


def test_xattrs(mounted):
    p = mounted.path("f")
    p.write_bytes(b"")
    os.setxattr(p, "user.a", b"1")
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.a", b"2", os.XATTR_CREATE)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.b", b"2", os.XATTR_REPLACE)
    assert e.value.errno == errno.ENODATA
    os.setxattr(p, "user.a", b"\0binary\xff", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.a") == b"\0binary\xff"
    assert os.listxattr(p) == ["user.a"]
    os.removexattr(p, "user.a")
    assert os.listxattr(p) == []
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.a")
    assert e.value.errno == errno.ENODATA


def test_statfs_and_fsync(mounted):
    st = os.statvfs(mounted.mnt)
    disk = os.statvfs(mounted.store)
    assert st.f_blocks == disk.f_blocks and st.f_bavail > 0 and st.f_namemax == 255
    with open(mounted.path("f"), "wb") as f:
        f.write(b"durable")
        f.flush()
        os.fsync(f.fileno())
        s = Store(mounted.store, readonly=True)      # committed while still open
        assert s.read(lambda t: len(list(t.stored_blocks()))) == 1
        s.close()


def test_concurrent_writers(mounted):
    def writer(n: int) -> None:
        data = bytes([n]) * (3 * BS + n)
        mounted.path(f"w{n}").write_bytes(data)
        with open(mounted.path("shared"), "r+b") as f:   # disjoint regions, one file
            f.seek(n * 10_000)
            f.write(bytes([n + 1]) * 10_000)

    mounted.path("shared").write_bytes(bytes(80_000))
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(8):
        assert mounted.path(f"w{n}").read_bytes() == bytes([n]) * (3 * BS + n)
    assert mounted.path("shared").read_bytes() == b"".join(bytes([n + 1]) * 10_000
                                                           for n in range(8))


def test_corrupt_block_is_eio_for_its_range_only(mounted):
    data = os.urandom(BS) + b"text" * (BS // 4) + os.urandom(BS)
    mounted.path("f").write_bytes(data)
    mounted.stop()
    s = Store(mounted.store)
    keys = s.read(lambda t: t.block_keys(2, 0, 5))
    frame = bytearray(s.read(lambda t: t.frame(keys[1])))
    frame[-1] ^= 1
    s.write(lambda t: t.replace_frame(keys[1], bytes(frame)))
    s.close()
    mounted.start()
    with open(mounted.path("f"), "rb") as f:
        assert f.read(BS) == data[:BS]
        with pytest.raises(OSError) as e:
            f.read(10)
        assert e.value.errno == errno.EIO
        f.seek(2 * BS)
        assert f.read() == data[2 * BS:]
    assert f"inode 2 offset {BS}" in mounted.log.read_text()


def test_second_daemon_and_bad_store_are_refused(mounted, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    r = subprocess.run([sys.executable, "-m", "llmfs.cli", "mount", str(mounted.store),
                        str(other)], capture_output=True, text=True)
    assert r.returncode != 0 and "in use by another llmfs process" in r.stderr
    r = subprocess.run([sys.executable, "-m", "llmfs.cli", "mount", str(tmp_path / "nope"),
                        str(other)], capture_output=True, text=True)
    assert r.returncode != 0 and "not an llmfs store" in r.stderr


def test_crash_keeps_fsynced_data(mounted):
    kept = os.urandom(5 * BS)
    with open(mounted.path("kept"), "wb") as f:
        f.write(kept)
        f.flush()
        os.fsync(f.fileno())
    mounted.path("hidden").write_bytes(os.urandom(BS))
    hidden = os.open(mounted.path("hidden"), os.O_RDONLY)
    os.unlink(mounted.path("hidden"))                    # open and unlinked at the crash
    pending = os.open(mounted.path("pending"), os.O_WRONLY | os.O_CREAT)
    os.write(pending, os.urandom(BS))                    # never fsynced
    mounted.kill()
    for fd in (hidden, pending):
        with contextlib.suppress(OSError):
            os.close(fd)
    mounted.start()                                      # remount after SIGKILL works
    assert mounted.path("kept").read_bytes() == kept
    assert sorted(os.listdir(mounted.mnt)) in (["kept"], ["kept", "pending"])
    mounted.stop()
    s = Store(mounted.store)                             # and the store is consistent
    refs: dict[bytes, int] = {}
    for _, _, key in s.read(lambda t: list(t.all_block_maps())):
        refs[key] = refs.get(key, 0) + 1
    for k, v in s.read(lambda t: list(t.scan("refs"))):
        assert refs.pop(k) == int.from_bytes(v[:4], "little")
    assert refs == {}
    s.close()


def test_live_stats_and_cache(mounted):
    mounted.path("f").write_bytes(os.urandom(300_000))
    mounted.stop()
    mounted.start()
    mounted.path("f").read_bytes()
    mounted.path("f").read_bytes()
    st = live_stats(mounted)
    assert st["plain_blocks_decoded"] == 5 and st["hot_hits"] >= 5
    with pytest.raises(OSError):
        os.setxattr(mounted.mnt, "user.llmfs.stats", b"{}")


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed")
def test_fio_verify_four_jobs(mounted):
    r = subprocess.run(["fio", "--name=verify", f"--directory={mounted.mnt}", "--size=16m",
                        "--bs=4k", "--rw=randwrite", "--numjobs=4", "--verify=crc32c",
                        "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
                        "--ioengine=psync",
                        "--output-format=json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = json.loads(r.stdout[r.stdout.index("{"):])["jobs"]
    assert len(jobs) == 4
    for job in jobs:   # each job wrote its 16 MiB and read all of it back to verify
        assert job["error"] == 0
        assert job["write"]["io_bytes"] == job["read"]["io_bytes"] == 16 << 20, job


def test_st_blocks_counts_a_buffered_rewrite_once(mounted):
    p = mounted.path("g")
    p.write_bytes(os.urandom(4 * BS))                      # stored at close
    with open(p, "r+b") as f:
        f.write(b"x")
        f.flush()                                          # in the daemon's write buffer
        assert os.fstat(f.fileno()).st_blocks * 512 == 4 * BS
        f.seek(6 * BS)
        f.write(b"y")                                      # a new block (5 is a hole)
        f.flush()
        assert os.fstat(f.fileno()).st_blocks * 512 == 5 * BS


def test_fallocate_punch_and_zero(mounted):
    p = mounted.path("f")
    data = bytearray(os.urandom(4 * BS))
    p.write_bytes(data)
    fd = os.open(p, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 6 * BS)                  # mode 0: grows the file
        data += bytes(2 * BS)
        assert os.fstat(fd).st_size == 6 * BS
        punch = 0x01 | 0x02                                # KEEP_SIZE | PUNCH_HOLE
        if libc.fallocate(fd, punch, ctypes.c_long(100), ctypes.c_long(2 * BS + 50)):
            raise OSError(ctypes.get_errno(), "fallocate")
        data[100:2 * BS + 150] = bytes(2 * BS + 50)
        assert os.fstat(fd).st_size == 6 * BS
    finally:
        os.close(fd)
    assert p.read_bytes() == data
    assert os.stat(p).st_blocks * 512 <= 3 * BS            # block 1 became a hole
    mounted.stop()
    mounted.start()
    assert p.read_bytes() == data


def test_sigterm_flushes_and_unmounts(mounted):
    data = os.urandom(3 * BS)
    fd = os.open(mounted.path("f"), os.O_WRONLY | os.O_CREAT)
    os.write(fd, data)                                     # buffered, not fsynced
    os.close(fd)
    mounted.proc.send_signal(signal.SIGTERM)
    assert mounted.proc.wait(60) == 0
    assert not os.path.ismount(mounted.mnt)
    mounted.proc = None
    mounted.start()
    assert mounted.path("f").read_bytes() == data


@pytest.fixture()
def small_disk_mount(tmp_path):
    with tmpfs(tmp_path / "disk", "12m") as disk:
        m = Mounted(disk)
        m.mkfs()
        m.start()
        yield m
        m.stop()


def test_disk_full_is_enospc(small_disk_mount):
    m = small_disk_mount
    kept = os.urandom(BS)
    with open(m.path("kept"), "wb") as f:
        f.write(kept)
        f.flush()
        os.fsync(f.fileno())
    with pytest.raises(OSError) as e:
        with open(m.path("big"), "wb") as f:
            for _ in range(64):                            # 16 MiB of random data
                f.write(os.urandom(4 * BS))
                f.flush()
            os.fsync(f.fileno())
    assert e.value.errno == errno.ENOSPC
    os.unlink(m.path("big"))
    assert m.path("kept").read_bytes() == kept
    m.stop()
    m.start()
    assert m.path("kept").read_bytes() == kept


def test_metrics_file(tmp_path):
    m = Mounted(tmp_path, options=f"metrics_file={tmp_path}/llmfs.prom,flush_interval_s=0.5")
    m.mkfs()
    m.start()
    try:
        m.path("f").write_bytes(b"x" * 100_000)
        m.path("f").read_bytes()
        prom = tmp_path / "llmfs.prom"
        deadline = time.time() + 10
        while not (prom.exists() and "llmfs_flushes" in prom.read_text()):
            assert time.time() < deadline
            time.sleep(0.1)
        text = prom.read_text()
        assert "# TYPE llmfs_dirty_bytes gauge" in text
        assert "# TYPE llmfs_flushes_total counter" in text
        assert f'llmfs_open_files{{store="{m.store}"}} 0' in text
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)                      # Debian's prometheus package
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        m.stop()
