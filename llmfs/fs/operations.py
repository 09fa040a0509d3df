"""FUSE operations over the store (mfusepy's path-based API).

Locking: ``_mutex`` guards the in-memory state (handles, write buffers) and
every write transaction, so each state change is one LMDB transaction made
while nobody else changes state.  Slow work runs outside it: encoding a
flush (striped per-inode ``_flush_locks`` keep one file's flushes and truncates in
order) and decoding blocks (``BlockReader``, model in worker processes).

Files unlinked while open: libfuse renames them to ``.fuse_hidden*`` and
unlinks that name at the last release (so fstat and fchmod keep working);
with ``-o hard_remove`` they lose their name at once and stay as nameless
inodes.  Both kinds are recorded as *orphans*, which the mount removes on
start: leftovers of a crash.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass

import mfusepy
from mfusepy import FuseOSError

from ..codec.frame import FrameError
from ..codec.plain import fast_frame
from ..compactor import Compactor
from ..config import MiB, Config
from ..store import DAMAGED, ROOT_INO, Inode, Store, StoreLock, Txn, block_key
from .blocks import BlockReader, is_llm
from .cache import BlockCache
from .writebuf import Dirty, Snapshot

log = logging.getLogger(__name__)

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
NAME_MAX = 255
XATTR_CREATE = 1
XATTR_REPLACE = 2
FALLOC_KEEP_SIZE, FALLOC_PUNCH_HOLE, FALLOC_ZERO_RANGE = 0x01, 0x02, 0x10
HIDDEN = b".fuse_hidden"
STATS_XATTR = "user.llmfs.stats"   # read-only, on the root: live daemon counters as JSON


def _err(code: int) -> FuseOSError:
    return FuseOSError(code)


def _name(part: str) -> bytes:
    name = os.fsencode(part)
    if len(name) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG)
    return name


@dataclass
class Handle:
    ino: int
    flags: int
    next_offset: int = 0   # where a sequential reader reads next


# live counters that go up and down (the rest only count up)
_GAUGES = {"dirty_bytes", "dirty_files", "open_files", "hot_bytes", "hot_blocks", "warm_bytes",
           "warm_blocks", "compact_busy"}
_HELP = {
    "dirty_bytes": "Bytes written and not yet committed to the store.",
    "dirty_files": "Files with uncommitted writes.",
    "open_files": "Open file handles.",
    "hot_bytes": "Decoded blocks in the hot cache, bytes.",
    "hot_blocks": "Decoded blocks in the hot cache.",
    "warm_bytes": "Recently decoded llm blocks kept as zstd, bytes.",
    "warm_blocks": "Recently decoded llm blocks kept as zstd.",
    "hot_hits": "Block reads served by the hot cache.",
    "warm_hits": "Block reads served by the warm cache.",
    "misses": "Block reads that had to decode a frame.",
    "flushes": "Commits of buffered writes.",
    "read_errors": "Reads that failed (EIO) on a missing or damaged block.",
    "writeback_errors": "Commits of buffered writes that failed.",
    "llm_batches": "Batches of llm blocks decoded.",
    "llm_blocks_decoded": "llm blocks decoded.",
    "llm_decode_ms": "Milliseconds spent decoding llm blocks.",
    "plain_blocks_decoded": "Model-free blocks decoded.",
    "readahead_blocks": "llm blocks decoded ahead of sequential readers.",
    "compact_busy": "1 while the compactor encodes a round.",
    "compact_rounds": "Compactor rounds run.",
    "compact_tried": "Cold blocks the compactor tried.",
    "compact_llm": "Blocks the compactor stored as llm frames.",
    "compact_fallback": "Blocks the compactor stored with zstd -19, LZMA, PPMd or ZPAQ.",
    "compact_upgraded": "llm blocks re-coded smaller (older format or model).",
    "compact_saved_bytes": "Bytes the compactor saved.",
    "compact_gone": "Blocks deleted or overwritten while the compactor had them.",
    "compact_ms": "Milliseconds the compactor spent encoding.",
    "compact_yields": "Compactor rounds put off for foreground I/O.",
    "compact_packed": "Frames copied into packs.",
    "compact_repacked": "Frames copied out of mostly dead packs.",
    "compact_dictionary_blocks": "Small blocks re-coded with a new store dictionary.",
    "dictionaries": "Store dictionaries trained by this daemon.",
    "verify_failures": "llm frames that did not decode back (kept as before).",
}


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class LLMFS(mfusepy.Operations):
    """The mounted filesystem.  The store is opened in :meth:`init`, after
    FUSE has daemonised (an LMDB environment must not cross a fork)."""

    use_ns = True

    def __init__(self, store_path: str, config: Config, lock: StoreLock | None = None) -> None:
        self.store_path = store_path
        self.store_lock = lock
        self.config = config
        self.store: Store | None = None
        self.reader: BlockReader | None = None
        self.cache = BlockCache(config.cache_mib * MiB, config.warm_cache_mib * MiB)
        self._mutex = threading.RLock()
        self._flush_locks = [threading.Lock() for _ in range(64)]
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, int] = {}   # directory handle -> inode
        self._open: Counter[int] = Counter()
        self._next_fh = 1
        self._dirty: dict[int, Dirty] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.stats: Counter[str] = Counter()
        self.unmounted = False
        self.compactor: Compactor | None = None
        self._last_io = 0.0   # monotonic time of the last read or write
        self._holes_ok: dict[int, tuple] = {}   # inode -> version whose holes were checked

    # -- life cycle ------------------------------------------------------
    def init(self, path: str) -> None:
        if self.store_lock is not None:
            self.store_lock.note_pid()
        self.store = Store(self.store_path)
        self.bs = self.store.block_size
        self.reader = BlockReader(self.store, self.cache, self.config.decode_workers)
        if self.config.decode_prestart and self.config.decode_workers:
            self.reader.prestart()
        self.store.write(self._reap_orphans)
        self._flusher = threading.Thread(target=self._flush_loop, name="llmfs-flusher",
                                         daemon=True)
        self._flusher.start()
        files, encoders = self.store.read(lambda t: t.codec_models())
        if self.config.compact and encoders:
            self.compactor = Compactor(self.store, files, encoders, self._mutex,
                                       self.config, self._foreground_busy)
            self.compactor.start()
        log.info("mounted %s (block size %d)", self.store_path, self.bs)

    @staticmethod
    def _reap_orphans(t: Txn) -> None:
        for ino, parent, name in t.orphans():
            inode = t.inode(ino)
            t.set_orphan(ino, False)
            if inode is None:
                continue
            if name:
                if t.lookup(parent, name) != ino:
                    continue
                t.del_entry(parent, name)
                inode.nlink -= 1
            log.info("removing inode %d, unlinked while open before a crash", ino)
            if inode.nlink <= 0:
                t.drop_inode(ino)
            else:
                t.put_inode(ino, inode)

    def _foreground_busy(self) -> bool:
        return time.monotonic() - self._last_io < self.config.compact_yield_s

    def destroy(self, path: str) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        if self.compactor is not None:
            self.compactor.stop()
        for ino in list(self._dirty):
            try:
                self._flush_ino(ino)
            except OSError as e:
                log.error("inode %d: could not flush at unmount: %s", ino, e)
        if self.reader is not None:
            self.reader.close()
        if self.store is not None:
            self.store.close()
        self.unmounted = True
        log.info("unmounted %s", self.store_path)

    def _write_metrics(self) -> None:
        """Prometheus text exposition of the live counters, replaced atomically
        (``promtool check metrics`` clean: help text, counters end in _total)."""
        path = self.config.metrics_file
        lines = []
        for name, value in sorted(self.live_stats().items()):
            gauge = name in _GAUGES
            metric = f"llmfs_{name}" + ("" if gauge else "_total")
            lines += [f"# HELP {metric} {_HELP.get(name, name.replace('_', ' '))}",
                      f"# TYPE {metric} {'gauge' if gauge else 'counter'}",
                      f'{metric}{{store="{_label(str(self.store_path))}"}} {value}']
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)

    def _flush_loop(self) -> None:
        while not self._stop.wait(min(1.0, self.config.flush_interval_s / 2)):
            if self.config.metrics_file:
                try:
                    self._write_metrics()
                except OSError as e:
                    log.warning("metrics file %s: %s", self.config.metrics_file, e)
            now = time.monotonic()
            with self._mutex:
                old = [i for i, d in self._dirty.items()
                       if now - d.since >= self.config.flush_interval_s]
            for ino in old:
                try:
                    self._flush_ino(ino)
                except Exception as e:  # keep the data buffered, try again later
                    log.error("inode %d: background flush failed: %s", ino, e)

    def live_stats(self) -> dict:
        """Counters of the running daemon (cache, decoding, write buffer)."""
        with self._mutex:
            dirty = self._dirty_bytes()
            out = {"dirty_bytes": dirty, "dirty_files": len(self._dirty),
                   "open_files": len(self._handles), **self.stats}
        out.update(self.cache.stats)
        out.update(self.cache.sizes())
        if self.reader is not None:
            out.update(self.reader.stats)
        if self.compactor is not None:
            out.update(self.compactor.stats)
        return out

    # -- helpers -----------------------------------------------------------
    def _resolve(self, t: Txn, path: str) -> int:
        ino = ROOT_INO
        for part in path.split("/"):
            if not part:
                continue
            inode = t.inode(ino)
            if inode is None or not inode.is_dir:
                raise _err(errno.ENOTDIR)
            child = t.lookup(ino, _name(part))
            if child is None:
                raise _err(errno.ENOENT)
            ino = child
        return ino

    def _split(self, t: Txn, path: str) -> tuple[int, bytes]:
        """Parent inode (must be a directory) and name of *path*."""
        head, _, tail = path.rstrip("/").rpartition("/")
        parent = self._resolve(t, head)
        inode = t.inode(parent)
        if inode is None or not inode.is_dir:
            raise _err(errno.ENOTDIR)
        return parent, _name(tail)

    def _ino(self, t: Txn, path: str | None, fh: int | None) -> int:
        if fh is not None and fh in self._handles:
            return self._handles[fh].ino
        if path is None:
            raise _err(errno.EBADF)
        return self._resolve(t, path)

    def _entry(self, t: Txn, path: str) -> tuple[int, bytes, int]:
        """Parent inode, name and inode of the existing entry *path* (ENOENT if none)."""
        parent, name = self._split(t, path)
        ino = t.lookup(parent, name)
        if ino is None:
            raise _err(errno.ENOENT)
        return parent, name, ino

    def _inode(self, t: Txn, ino: int) -> Inode:
        inode = t.inode(ino)
        if inode is None:
            raise _err(errno.ENOENT)
        return inode

    def _touch_dir(self, t: Txn, ino: int, nlink_delta: int = 0) -> None:
        inode = self._inode(t, ino)
        inode.mtime_ns = inode.ctime_ns = time.time_ns()
        inode.nlink += nlink_delta
        t.put_inode(ino, inode)

    def _new_inode(self, t: Txn, parent: int, mode: int, rdev: int = 0) -> tuple[int, Inode]:
        uid, gid, _ = mfusepy.fuse_get_context()
        pinode = self._inode(t, parent)
        if pinode.mode & stat.S_ISGID:   # BSD group semantics under a setgid directory
            gid = pinode.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        now = time.time_ns()
        inode = Inode(mode, uid, gid, 2 if stat.S_ISDIR(mode) else 1, rdev=rdev,
                      atime_ns=now, mtime_ns=now, ctime_ns=now)
        ino = t.new_ino()
        t.put_inode(ino, inode)
        return ino, inode

    def _create_entry(self, path: str, mode: int, rdev: int = 0,
                      target: bytes | None = None) -> int:
        def op(t: Txn) -> int:
            parent, name = self._split(t, path)
            if t.lookup(parent, name) is not None:
                raise _err(errno.EEXIST)
            ino, inode = self._new_inode(t, parent, mode, rdev)
            if target is not None:
                t.set_symlink(ino, target)
                inode.size = len(target)
                t.put_inode(ino, inode)
            t.add_entry(parent, name, ino)
            self._touch_dir(t, parent, 1 if stat.S_ISDIR(mode) else 0)
            return ino
        with self._mutex:
            return self.store.write(op)

    def _new_handle(self, ino: int, flags: int) -> int:
        with self._mutex:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = Handle(ino, flags)
            self._open[ino] += 1
            return fh

    def _attrs(self, t: Txn, ino: int, inode: Inode) -> dict:
        d = self._dirty.get(ino)
        size, mtime, ctime, nblocks = inode.size, inode.mtime_ns, inode.ctime_ns, inode.nblocks
        if d is not None:
            size, mtime, ctime = d.size, d.mtime_ns, max(ctime, d.ctime_ns)
            # buffered blocks count once: those replacing a stored block are in nblocks
            nblocks += sum(1 for i in d.blocks if not t.block_keys(ino, i, i))
        return {"st_ino": ino, "st_mode": inode.mode, "st_nlink": inode.nlink,
                "st_uid": inode.uid, "st_gid": inode.gid, "st_size": size,
                "st_rdev": inode.rdev, "st_atime": inode.atime_ns, "st_mtime": mtime,
                "st_ctime": ctime, "st_blksize": self.bs,
                "st_blocks": min(nblocks * self.bs, (size + 511) // 512 * 512) // 512}

    # -- attributes ------------------------------------------------------
    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        def op(t: Txn) -> dict:
            ino = self._ino(t, path, fh)
            return self._attrs(t, ino, self._inode(t, ino))
        with self._mutex:
            return self.store.read(op)

    def _setattr(self, path: str | None, fh: int | None, change) -> int:
        def op(t: Txn) -> None:
            ino = self._ino(t, path, fh)
            inode = self._inode(t, ino)
            change(ino, inode)
            inode.ctime_ns = time.time_ns()
            t.put_inode(ino, inode)
        with self._mutex:
            self.store.write(op)
        return 0

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        def change(ino: int, inode: Inode) -> None:
            inode.mode = stat.S_IFMT(inode.mode) | (mode & 0o7777)
        return self._setattr(path, fh, change)

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        """-1 keeps a field.  The kernel itself sends the mode change that
        drops set-user-ID / set-group-ID on a change of owner."""
        def change(ino: int, inode: Inode) -> None:
            if uid != -1:
                inode.uid = uid
            if gid != -1:
                inode.gid = gid
        return self._setattr(path, fh, change)

    def utimens(self, path: str | None, times=None, fh: int | None = None) -> int:
        now = time.time_ns()

        def pick(ts: tuple[int, int] | None, old: int) -> int:
            if ts is None or ts[1] == UTIME_NOW:
                return now
            if ts[1] == UTIME_OMIT:
                return old
            return ts[0] * 10**9 + ts[1]

        def change(ino: int, inode: Inode) -> None:
            a, m = times if times is not None else (None, None)
            d = self._dirty.get(ino)
            inode.atime_ns = pick(a, inode.atime_ns)
            inode.mtime_ns = pick(m, d.mtime_ns if d else inode.mtime_ns)
            if d is not None:
                d.mtime_ns = inode.mtime_ns
        return self._setattr(path, fh, change)

    # -- directories -------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> int:
        self._create_entry(path, stat.S_IFDIR | (mode & 0o7777))
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode)):
            raise _err(errno.EINVAL)
        self._create_entry(path, mode, dev)
        return 0

    def symlink(self, path: str, target: str) -> int:
        data = os.fsencode(target)
        if len(data) >= 4096:
            raise _err(errno.ENAMETOOLONG)
        self._create_entry(path, stat.S_IFLNK | 0o777, target=data)
        return 0

    def readlink(self, path: str) -> str:
        def op(t: Txn) -> bytes:
            target = t.symlink(self._resolve(t, path))
            if target is None:
                raise _err(errno.EINVAL)
            return target
        return os.fsdecode(self.store.read(op))

    def opendir(self, path: str) -> int:
        ino = self.store.read(lambda t: self._resolve(t, path))
        with self._mutex:
            fh = self._next_fh
            self._next_fh += 1
            self._dirs[fh] = ino
            return fh

    def releasedir(self, path: str | None, fh: int) -> int:
        with self._mutex:
            self._dirs.pop(fh, None)
        return 0

    def readdir(self, path: str | None, fh: int) -> list:
        def op(t: Txn) -> list:
            ino = self._dirs[fh] if fh in self._dirs else self._ino(t, path, None)
            if not self._inode(t, ino).is_dir:
                raise _err(errno.ENOTDIR)
            out = [(".", {"st_ino": ino, "st_mode": stat.S_IFDIR}, 0),
                   ("..", {"st_mode": stat.S_IFDIR}, 0)]
            for name, child in t.entries(ino):
                inode = t.inode(child)
                if inode is not None:
                    out.append((os.fsdecode(name), {"st_ino": child, "st_mode": inode.mode}, 0))
            return out
        return self.store.read(op)

    def rmdir(self, path: str) -> int:
        def op(t: Txn) -> None:
            parent, name, ino = self._entry(t, path)
            if not self._inode(t, ino).is_dir:
                raise _err(errno.ENOTDIR)
            if t.has_entries(ino):
                raise _err(errno.ENOTEMPTY)
            t.del_entry(parent, name)
            t.drop_inode(ino)
            self._touch_dir(t, parent, -1)
        with self._mutex:
            self.store.write(op)
        return 0

    # -- links and names ---------------------------------------------------
    def link(self, path: str, target: str) -> int:
        """Hard link: new name *path* for the file at *target*."""
        def op(t: Txn) -> None:
            ino = self._resolve(t, target)
            inode = self._inode(t, ino)
            if inode.is_dir:
                raise _err(errno.EPERM)
            parent, name = self._split(t, path)
            if t.lookup(parent, name) is not None:
                raise _err(errno.EEXIST)
            t.add_entry(parent, name, ino)
            inode.nlink += 1
            inode.ctime_ns = time.time_ns()
            t.put_inode(ino, inode)
            t.set_orphan(ino, False)
            self._touch_dir(t, parent)
        with self._mutex:
            self.store.write(op)
        return 0

    def _unlink_inode(self, t: Txn, ino: int, inode: Inode) -> None:
        """One name of *ino* is gone: drop it, or keep it as an orphan while open."""
        inode.nlink -= 1
        inode.ctime_ns = time.time_ns()
        if inode.nlink > 0:
            t.put_inode(ino, inode)
        elif self._open[ino] > 0:
            t.put_inode(ino, inode)
            t.set_orphan(ino, True)
        else:
            t.drop_inode(ino)
            self._dirty.pop(ino, None)

    def unlink(self, path: str) -> int:
        def op(t: Txn) -> None:
            parent, name, ino = self._entry(t, path)
            inode = self._inode(t, ino)
            if inode.is_dir:
                raise _err(errno.EISDIR)
            t.del_entry(parent, name)
            if name.startswith(HIDDEN):
                t.set_orphan(ino, False)
            self._unlink_inode(t, ino, inode)
            self._touch_dir(t, parent)
        with self._mutex:
            self.store.write(op)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or \
                flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise _err(errno.EINVAL)

        def op(t: Txn) -> None:
            op_, oname = self._split(t, old)
            np_, nname = self._split(t, new)
            src = t.lookup(op_, oname)
            if src is None:
                raise _err(errno.ENOENT)
            dst = t.lookup(np_, nname)
            sinode = self._inode(t, src)
            now = time.time_ns()
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise _err(errno.ENOENT)
                dinode = self._inode(t, dst)
                t.add_entry(op_, oname, dst)
                t.add_entry(np_, nname, src)
                if op_ != np_ and sinode.is_dir != dinode.is_dir:
                    self._touch_dir(t, op_, 1 if dinode.is_dir else -1)
                    self._touch_dir(t, np_, 1 if sinode.is_dir else -1)
                for ino, inode in ((src, sinode), (dst, dinode)):
                    inode.ctime_ns = now
                    t.put_inode(ino, inode)
                self._touch_dir(t, op_)
                self._touch_dir(t, np_)
                return
            if dst == src:
                return   # two names of one file: POSIX says do nothing
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise _err(errno.EEXIST)
                dinode = self._inode(t, dst)
                if dinode.is_dir and not sinode.is_dir:
                    raise _err(errno.EISDIR)
                if sinode.is_dir and not dinode.is_dir:
                    raise _err(errno.ENOTDIR)
                if dinode.is_dir:
                    if t.has_entries(dst):
                        raise _err(errno.ENOTEMPTY)
                    t.drop_inode(dst)
                    self._touch_dir(t, np_, -1)
                else:
                    self._unlink_inode(t, dst, dinode)
            t.del_entry(op_, oname)
            t.add_entry(np_, nname, src)
            if nname.startswith(HIDDEN):   # libfuse hiding an open file it unlinks
                t.set_orphan(src, True, np_, nname)
            sinode.ctime_ns = now
            t.put_inode(src, sinode)
            if sinode.is_dir and op_ != np_:
                self._touch_dir(t, op_, -1)
                self._touch_dir(t, np_, 1)
            else:
                self._touch_dir(t, op_)
                self._touch_dir(t, np_)
        with self._mutex:
            self.store.write(op)
        return 0

    # -- extended attributes -------------------------------------------------
    @staticmethod
    def _xname(name: str) -> bytes:
        if name.startswith("system.posix_acl"):
            raise _err(errno.EOPNOTSUPP)   # ACLs are not kept; say so rather than ignore them
        data = os.fsencode(name)
        if not data or len(data) > 255:
            raise _err(errno.ERANGE)
        return data

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        if name == STATS_XATTR and path == "/":
            raise _err(errno.EPERM)
        key = self._xname(name)
        if len(value) > 65536:
            raise _err(errno.E2BIG)

        def op(t: Txn) -> None:
            ino = self._resolve(t, path)
            inode = self._inode(t, ino)
            exists = t.xattr(ino, key) is not None
            if options & XATTR_CREATE and exists:
                raise _err(errno.EEXIST)
            if options & XATTR_REPLACE and not exists:
                raise _err(errno.ENODATA)
            t.set_xattr(ino, key, bytes(value))
            inode.ctime_ns = time.time_ns()
            t.put_inode(ino, inode)
        with self._mutex:
            self.store.write(op)
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if name == STATS_XATTR and path == "/":
            return json.dumps(self.live_stats(), sort_keys=True).encode()
        key = self._xname(name)
        value = self.store.read(lambda t: t.xattr(self._resolve(t, path), key))
        if value is None:
            raise _err(errno.ENODATA)
        return value

    def listxattr(self, path: str) -> list[str]:
        return [os.fsdecode(n) for n in
                self.store.read(lambda t: t.xattr_names(self._resolve(t, path)))]

    def removexattr(self, path: str, name: str) -> int:
        key = self._xname(name)

        def op(t: Txn) -> None:
            ino = self._resolve(t, path)
            inode = self._inode(t, ino)
            if not t.del_xattr(ino, key):
                raise _err(errno.ENODATA)
            inode.ctime_ns = time.time_ns()
            t.put_inode(ino, inode)
        with self._mutex:
            self.store.write(op)
        return 0

    # -- open files --------------------------------------------------------
    def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
        ino = self._create_entry(path, stat.S_IFREG | (mode & 0o7777))
        return self._new_handle(ino, flags)

    def open(self, path: str, flags: int) -> int:
        ino = self.store.read(lambda t: self._resolve(t, path))
        fh = self._new_handle(ino, flags)
        if flags & os.O_TRUNC:
            try:
                self._truncate_ino(ino, 0)
            except BaseException:
                self.release(path, fh)
                raise
        return fh

    def flush(self, path: str | None, fh: int) -> int:
        """Called at every close(): commit the file's buffered data so that a
        write-back error (disk full, I/O error) reaches the program that
        closes it.  The data stays buffered after a failure (the flusher and
        the next close or fsync try again)."""
        with self._mutex:
            h = self._handles.get(fh)
        if h is not None:
            self._commit_or_raise(h.ino)
        return 0

    def _commit_or_raise(self, ino: int, keep_tail: bool = False) -> None:
        """Flush *ino*; any failure becomes the errno the caller should see."""
        try:
            self._flush_ino(ino, keep_tail)
        except FuseOSError:
            raise
        except OSError as e:
            self.stats["writeback_errors"] += 1
            log.error("inode %d: buffered data not committed: %s", ino, e)
            raise _err(e.errno if isinstance(e.errno, int) and e.errno > 0
                       else errno.EIO) from None
        except Exception as e:
            self.stats["writeback_errors"] += 1
            log.error("inode %d: buffered data not committed: %r", ino, e)
            raise _err(errno.EIO) from None

    def release(self, path: str | None, fh: int) -> int:
        """The last close of a handle.  Its error cannot reach the program any
        more (flush already reported it); data that still fails to commit
        stays buffered for the flusher."""
        with self._mutex:
            h = self._handles.get(fh)
        if h is None:
            return 0
        try:
            self._flush_ino(h.ino)
        except Exception as e:
            log.error("inode %d: flush at release failed, data kept buffered: %s", h.ino, e)
        finally:
            with self._mutex:
                self._handles.pop(fh, None)
                self._open[h.ino] -= 1
                if self._open[h.ino] <= 0:
                    del self._open[h.ino]
                    self.store.write(lambda t: self._drop_if_orphan(t, h.ino))
        return 0

    def _drop_if_orphan(self, t: Txn, ino: int) -> None:
        inode = t.inode(ino)
        if inode is not None and inode.nlink == 0:
            t.drop_inode(ino)
            self._dirty.pop(ino, None)

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self._mutex:
            h = self._handles.get(fh)
        if h is not None:
            self._commit_or_raise(h.ino)
        try:
            self.store.sync()
        except Exception as e:
            log.error("fsync: store sync failed: %s", e)
            raise _err(errno.EIO) from None
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.store.sync()
        return 0

    def statfs(self, path: str) -> dict:
        disk = os.statvfs(self.store_path)
        files = self.store.read(lambda t: t.inode_count())
        return {"f_bsize": self.bs, "f_frsize": disk.f_frsize, "f_blocks": disk.f_blocks,
                "f_bfree": disk.f_bfree, "f_bavail": disk.f_bavail,
                "f_files": files + disk.f_ffree, "f_ffree": disk.f_ffree,
                "f_favail": disk.f_favail, "f_namemax": NAME_MAX}

    # -- data --------------------------------------------------------------
    def _dirty_for(self, t: Txn, ino: int) -> Dirty:
        d = self._dirty.get(ino)
        if d is None:
            inode = self._inode(t, ino)
            d = self._dirty[ino] = Dirty(inode.size, inode.mtime_ns, inode.ctime_ns)
        return d

    def _load_blocks(self, ino: int, wanted) -> None:
        """Bring blocks *wanted(size)* of *ino* into its write buffer,
        decoding outside the mutex; returns with the mutex held and every
        wanted block buffered (the caller must release it)."""
        while True:
            self._mutex.acquire()
            try:
                def look(t: Txn):
                    d = self._dirty.get(ino)
                    size = d.size if d else self._inode(t, ino).size
                    need = [i for i in wanted(size) if not (d and i in d.blocks)]
                    keys = {i: k for i, k in t.block_keys(ino, min(need), max(need)).items()
                            if i in need} if need else {}
                    return need, keys, self._frames(t, keys)
                need, keys, (cached, frames) = self.store.read(look)
                if not keys:
                    d = self.store.read(lambda t: self._dirty_for(t, ino))
                    for i in need:
                        d.blocks.setdefault(i, bytearray())
                        d.versions.setdefault(i, 0)
                    return
            except BaseException:
                self._mutex.release()
                raise
            self._mutex.release()
            data = self._fetch(ino, {i: k for i, k in keys.items() if i not in cached}, frames)
            data.update(cached)
            self._mutex.acquire()
            try:
                now = self.store.read(lambda t: t.block_keys(ino, min(need), max(need)))
                d = self._dirty.get(ino)
                if all(now.get(i) == k or (d and i in d.blocks) for i, k in keys.items()):
                    d = self.store.read(lambda t: self._dirty_for(t, ino))
                    for i in need:
                        if i not in d.blocks:
                            d.blocks[i] = bytearray(data.get(i, b""))
                            d.versions[i] = 0
                    return
            except BaseException:
                self._mutex.release()
                raise
            self._mutex.release()   # a flush moved the block meanwhile: look again

    def _frames(self, t: Txn, keys: dict[int, bytes]) -> tuple[dict[int, bytes], dict]:
        """Split blocks *keys* into cached content and frames still to decode."""
        cached, frames = {}, {}
        for i, k in keys.items():
            hit = self.cache.get(k)
            if hit is not None:
                cached[i] = hit
            else:
                frames[k] = t.frame(k)
        return cached, frames

    def _fetch(self, ino: int, keys: dict[int, bytes], frames: dict[bytes, bytes | None],
               extra: dict[bytes, bytes] | None = None) -> dict[int, bytes]:
        """Decode blocks *keys* (index -> key) from *frames*; *extra* frames are
        then decoded in the background for the cache (readahead).  A missing or
        damaged block is EIO for this read, logged with inode and offset."""
        for i, k in keys.items():
            if frames.get(k) is None:
                self.stats["read_errors"] += 1
                log.error("inode %d offset %d: %s", ino, i * self.bs,
                          "damaged block map entry" if k == DAMAGED else
                          f"block {k.hex()[:16]} missing from the store")
                raise _err(errno.EIO)
        todo = {k: frames[k] for k in keys.values()}
        try:
            results = self.reader.decode(todo) if todo else {}
        except Exception as e:   # the decoder itself failed (e.g. its workers died twice)
            self.stats["read_errors"] += 1
            first = min(keys)
            log.error("inode %d offset %d: decoding %d block(s) failed: %r",
                      ino, first * self.bs, len(todo), e)
            raise _err(errno.EIO) from None
        if extra:
            self.reader.prefetch(extra)
        out: dict[int, bytes] = {}
        for i, k in keys.items():
            r = results[k]
            if isinstance(r, FrameError):
                self.stats["read_errors"] += 1
                log.error("inode %d offset %d: unreadable block %s: %s",
                          ino, i * self.bs, k.hex()[:16], r)
                raise _err(errno.EIO)
            out[i] = r
        return out

    def _check_holes(self, t: Txn, ino: int) -> None:
        """Before a hole reads as zeros: make sure it is one.  An entry of the
        block map lost to damage (a flipped bit in its key moves it away) leaves
        a gap that looks like a hole; the inode's block count then disagrees
        with the map.  Checked once per inode version."""
        inode = self._inode(t, ino)
        version = (inode.size, inode.nblocks, inode.mtime_ns, inode.ctime_ns)
        if self._holes_ok.get(ino) == version:
            return
        if not t.map_matches(ino, inode):
            self.stats["read_errors"] += 1
            log.error("inode %d: block map does not match the inode (%d blocks, %d bytes): "
                      "damaged store? holes read as EIO (run llmfs fsck)",
                      ino, inode.nblocks, inode.size)
            raise _err(errno.EIO)
        if len(self._holes_ok) > 100_000:
            self._holes_ok.clear()
        self._holes_ok[ino] = version

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        self._last_io = time.monotonic()
        bs = self.bs
        ra = self.config.readahead_blocks

        def look(t: Txn):
            h = self._handles.get(fh)
            ino = h.ino if h else self._resolve(t, path)
            d = self._dirty.get(ino)
            fsize = d.size if d else self._inode(t, ino).size
            end = min(offset + size, fsize)
            if end <= offset:
                return ino, end, {}, {}, {}, {}
            first, last = offset // bs, (end - 1) // bs
            buffered = {i: bytes(d.blocks[i]) for i in range(first, last + 1)
                        if d and i in d.blocks}
            seq = h is not None and (offset == h.next_offset or offset == 0)
            if h is not None:
                h.next_offset = end
            keys = {i: k for i, k in t.block_keys(ino, first, last + (ra if seq else 0)).items()
                    if i not in buffered}
            now = {i: k for i, k in keys.items() if i <= last}
            if len(now) + len(buffered) < last - first + 1:
                self._check_holes(t, ino)
            cached, frames = self._frames(t, now)
            extra = {}
            if seq and (any(f is not None and is_llm(f) for f in frames.values())
                        or any(self.cache.from_model(now[i]) for i in cached)):
                for i, k in keys.items():   # readahead: the next llm blocks of a llm reader
                    if i > last and k not in frames and k not in self.cache \
                            and not self.reader.busy(k):
                        f = t.frame(k)
                        if f is not None and is_llm(f):
                            extra[k] = f
            buffered.update(cached)
            return ino, end, buffered, {i: k for i, k in now.items() if i not in cached}, \
                frames, extra

        with self._mutex:
            ino, end, buffered, keys, frames, extra = self.store.read(look)
        if end <= offset:
            return b""
        data = self._fetch(ino, keys, frames, extra)
        data.update(buffered)
        out = bytearray(end - offset)
        for i in range(offset // bs, (end - 1) // bs + 1):
            block = data.get(i)
            if not block:
                continue   # a hole reads as zeros
            start = i * bs
            lo, hi = max(offset, start), min(end, start + len(block))
            if hi > lo:
                out[lo - offset:hi - offset] = block[lo - start:hi - start]
        return bytes(out)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self._last_io = time.monotonic()
        with self._mutex:
            h = self._handles.get(fh)
            ino = h.ino if h else self.store.read(lambda t: self._resolve(t, path))
            if h is not None and h.flags & os.O_APPEND:
                d = self._dirty.get(ino)
                offset = d.size if d else self.store.read(lambda t: self._inode(t, ino).size)
        return self._write_ino(ino, data, offset)

    def _dirty_bytes(self) -> int:
        return sum(d.nbytes() for d in self._dirty.values())

    def _write_ino(self, ino: int, data: bytes, offset: int) -> int:
        bs = self.bs
        if not data:
            return 0
        with self._mutex:
            stuck = self._dirty_bytes() > 2 * self.config.dirty_mib * MiB
        if stuck:   # flushes are failing (disk full?): report it rather than buffer more
            self._commit_or_raise(ino)
            with self._mutex:
                if self._dirty_bytes() > 2 * self.config.dirty_mib * MiB:
                    raise _err(errno.ENOSPC)
        end = offset + len(data)
        first, last = offset // bs, (end - 1) // bs

        def partial(size: int) -> list[int]:
            # blocks that keep old bytes: the write covers them only in part,
            # and they hold data (they start below the current size)
            out = []
            for i in {first, last}:
                covers = offset <= i * bs and end >= min((i + 1) * bs, max(size, end))
                if not covers and i * bs < size:
                    out.append(i)
            return sorted(out)

        self._load_blocks(ino, partial)
        try:
            d = self.store.read(lambda t: self._dirty_for(t, ino))
            view = memoryview(data)
            for i in range(first, last + 1):
                lo, hi = max(offset, i * bs), min(end, (i + 1) * bs)
                if i not in d.blocks:
                    d.blocks[i] = bytearray()
                    d.versions[i] = 0
                d.write(i, lo - i * bs, view[lo - offset:hi - offset])
            d.size = max(d.size, end)
            d.mtime_ns = d.ctime_ns = time.time_ns()
            d.attrs_dirty = True
            full = len(d.blocks) >= self.config.file_flush_blocks
            over = self._dirty_bytes() > self.config.dirty_mib * MiB
        finally:
            self._mutex.release()
        if full or over:   # a failure here is the write's error; the data stays buffered
            self._commit_or_raise(ino, keep_tail=True)
        return len(data)

    def fallocate(self, path: str | None, mode: int, offset: int, length: int, fh: int) -> int:
        """Space is never reserved (blocks are compressed when stored), so
        mode 0 only grows the file; hole punching and zeroing are real."""
        if offset < 0 or length <= 0:
            raise _err(errno.EINVAL)
        if mode & ~(FALLOC_KEEP_SIZE | FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE):
            raise _err(errno.EOPNOTSUPP)
        if mode & FALLOC_PUNCH_HOLE and not mode & FALLOC_KEEP_SIZE:
            raise _err(errno.EOPNOTSUPP)
        with self._mutex:
            ino = self.store.read(lambda t: self._ino(t, path, fh))
            d = self._dirty.get(ino)
            size = d.size if d else self.store.read(lambda t: self._inode(t, ino).size)
        if mode & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE):
            self._zero_range(ino, offset, min(offset + length, size))
        if not mode & FALLOC_KEEP_SIZE and offset + length > size:
            self._truncate_ino(ino, offset + length)
        return 0

    def _zero_range(self, ino: int, start: int, end: int) -> None:
        """Zeros in [start, end): whole blocks become holes, edges are written."""
        bs = self.bs
        if end <= start:
            return
        first, stop = -(-start // bs), end // bs     # whole blocks first..stop-1
        if first >= stop:
            self._write_ino(ino, bytes(end - start), start)
            return
        if start < first * bs:
            self._write_ino(ino, bytes(first * bs - start), start)
        if stop * bs < end:
            self._write_ino(ino, bytes(end - stop * bs), stop * bs)
        with self._flush_lock(ino), self._mutex:
            d = self._dirty.get(ino)
            if d is not None:
                d.drop_range(first, stop)

            def op(t: Txn) -> None:
                inode = self._inode(t, ino)
                for i in t.block_keys(ino, first, stop - 1):
                    inode.nblocks += t.clear_block(ino, i)
                inode.mtime_ns = inode.ctime_ns = time.time_ns()
                if d is not None:
                    d.mtime_ns = d.ctime_ns = inode.mtime_ns
                t.put_inode(ino, inode)
            self.store.write(op)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self._mutex:
            ino = self.store.read(lambda t: self._ino(t, path, fh))
        self._truncate_ino(ino, length)
        return 0

    def _truncate_ino(self, ino: int, length: int) -> None:
        bs = self.bs
        with self._flush_lock(ino):
            cut = length // bs if length % bs else None

            def wanted(size: int) -> list[int]:
                return [cut] if cut is not None and cut * bs < size else []

            self._load_blocks(ino, wanted)
            try:
                def op(t: Txn) -> None:
                    inode = self._inode(t, ino)
                    if inode.is_dir:
                        raise _err(errno.EISDIR)
                    d = self._dirty_for(t, ino)
                    keep = -(-length // bs)   # blocks 0..keep-1 survive
                    d.drop_from(keep)
                    if cut is not None and cut in d.blocks and len(d.blocks[cut]) > length % bs:
                        d.cut(cut, length % bs)
                    inode.nblocks -= t.truncate_blocks(ino, keep)
                    now = time.time_ns()
                    d.size = inode.size = length
                    d.mtime_ns = d.ctime_ns = inode.mtime_ns = inode.ctime_ns = now
                    t.put_inode(ino, inode)
                self.store.write(op)
            finally:
                self._mutex.release()

    def _flush_lock(self, ino: int) -> threading.Lock:
        """Striped: bounded memory, and a thread only ever holds one stripe."""
        return self._flush_locks[ino % len(self._flush_locks)]

    def _flush_ino(self, ino: int, keep_tail: bool = False) -> None:
        """Commit *ino*'s buffered blocks as fast zstd frames in one transaction.
        *keep_tail* leaves a partial last block buffered (more appends coming)."""
        with self._flush_lock(ino):
            with self._mutex:
                d = self._dirty.get(ino)
                if d is None:
                    return
                skip: set[int] = set()
                if keep_tail and d.size % self.bs:
                    skip.add(d.size // self.bs)
                snap = d.snapshot(skip)
            frames = {i: self._encode(raw) for i, (raw, _) in snap.blocks.items()}
            with self._mutex:
                self.store.write(lambda t: self._commit(t, ino, snap, frames))
                d = self._dirty.get(ino)
                if d is not None and d.settle(snap):
                    del self._dirty[ino]
                self.stats["flushes"] += 1

    def _encode(self, raw: bytes) -> tuple[bytes, bytes | None]:
        key = block_key(raw)
        if self.store.read(lambda t: t.has_block(key)):
            return key, None
        return key, fast_frame(raw, self.config.write_zstd_level, self.store.dictionary)

    def _commit(self, t: Txn, ino: int, snap: Snapshot, frames: dict) -> None:
        inode = t.inode(ino)
        if inode is None:
            return   # deleted while we encoded
        for i, (key, frame) in frames.items():
            if not snap.blocks[i][0].strip(b"\0"):
                inode.nblocks += t.clear_block(ino, i)   # all zeros: keep a hole
                continue
            if frame is None and not t.has_block(key):
                frame = fast_frame(snap.blocks[i][0], self.config.write_zstd_level,
                                   self.store.dictionary)
            inode.nblocks += t.set_block(ino, i, key, frame)
        inode.size = snap.size
        inode.mtime_ns = snap.mtime_ns
        inode.ctime_ns = max(inode.ctime_ns, snap.ctime_ns)
        t.put_inode(ino, inode)
