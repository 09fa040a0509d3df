"""The LMDB environment: opening, locking, growing, and one transaction type.

Every state change runs as one write transaction (``Store.write(fn)``): it
commits whole or not at all, so a killed daemon leaves the last committed
state.  The environment syncs data pages on every commit but not the meta
page (``metasync=False``): LMDB keeps two meta pages, so a system crash can
lose at most the last commit, never the integrity of the store.

A store is served by one process at a time, enforced by an ``flock`` on
``STORE/llmfs.lock`` (LMDB itself would happily let two writers interleave
their transactions, which is not what an admin who mounted twice wants).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import lmdb
import zstandard

from ..codec.frame import Codec, FrameError, Head, frame_head
from ..codec.plain import add_dictionary
from . import packs
from .packs import FILL_SIZE, WHERE_SIZE, Fill, PackError, Where
from .schema import (DAMAGED, DATABASES, FORMAT_VERSION, INO_SIZE, INODE_SIZE, KEY_SIZE,
                     ROOT_INO, Inode, fmap_index, fmap_key, ino_key, ino_of, pack_ref, ref_tried,
                     seal, unpack_ref, unseal)

T = TypeVar("T")
log = logging.getLogger(__name__)
_MIN_MAP = 1 << 30
_LOCKFILE = "llmfs.lock"
_DISK_RESERVE = 16 << 20   # a failed commit with less free than this is "disk full"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"   # a safetensors file starts with its header length instead
_PACK_CACHE = 8   # packs kept in memory: reading one frame copies its whole pack value


def _pack_model(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(data)


def _unpack_model(short_id: bytes, value: bytes) -> bytes | None:
    """The model file (or dictionary) kept as *value*, or None when it is
    damaged (it does not decompress, or its hash is not its id: the first 8
    bytes of blake2b-256)."""
    try:
        data = zstandard.ZstdDecompressor().decompress(value) \
            if value[:4] == _ZSTD_MAGIC else value
    except zstandard.ZstdError:
        return None
    return data if hashlib.blake2b(data, digest_size=32).digest()[:8] == short_id else None


class StoreError(Exception):
    """A store that cannot be used as asked; the message is meant for the admin."""


# What LMDB says when a page of its file is not what it should be (bit rot).
_LMDB_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError)


class DamagedRecord(OSError):
    """A store record whose seal does not match (bit rot, a bad disk): EIO
    for the operation that needed it; ``llmfs fsck`` reports and repairs it."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EIO, f"damaged store record: {what}")
        log.error("%s (run llmfs fsck)", self.strerror)


class StoreLock:
    """Exclusive use of a store by one process (daemon or offline tool).

    The lock lives on an open file description, so it survives the fork of
    FUSE's daemonisation and ends when the last process holding it exits."""

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        if not (path / "data.mdb").exists():
            raise StoreError(f"{path}: not an llmfs store (run `llmfs mkfs {path}` first)")
        self.fd = os.open(path / _LOCKFILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise StoreError(f"{path}: store is in use by another llmfs process"
                             + (f" (pid {holder})" if holder else "")) from None
        self.note_pid()

    def note_pid(self) -> None:
        """Record the holder's pid (called again after daemonising)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Gate:
    """Many transactions at once, or one map resize alone (LMDB requires that
    no transaction of this process is open while the map size changes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Store:
    """An open store.  Use :meth:`read` and :meth:`write` with a function of a
    :class:`Txn`; they return what the function returns."""

    def __init__(self, path: Path | str, readonly: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / "data.mdb").exists():
            raise StoreError(f"{self.path}: not an llmfs store (run `llmfs mkfs {self.path}` first)")
        size = max(_MIN_MAP, 2 * (self.path / "data.mdb").stat().st_size)
        try:
            self.env = lmdb.open(str(self.path), map_size=size, max_dbs=len(DATABASES) + 2,
                                 readonly=readonly, metasync=False, sync=True, readahead=False,
                                 max_readers=256)
        except lmdb.Error as e:
            raise StoreError(f"{self.path}: cannot open store: {e}") from None
        self.readonly = readonly
        self.dbs = {name: self._open_db(name) for name in DATABASES}
        self._gate = _Gate()
        self._packs: OrderedDict[int, bytes] = OrderedDict()   # immutable, ids never reused
        self._packs_lock = threading.Lock()
        version = self.read(lambda t: t.meta("format"))
        if version is None:
            raise StoreError(f"{self.path}: not an llmfs store (no format version)")
        if int(version) > FORMAT_VERSION:
            self.close()
            raise StoreError(f"{self.path}: store format {version} is newer than this llmfs "
                             f"understands ({FORMAT_VERSION}); upgrade llmfs")
        if int(version) < FORMAT_VERSION and not readonly:
            # records written from now on are sealed and frames packed, which an
            # older llmfs cannot read; frames compacted before packs go into packs
            self.write(lambda t: (t.adopt_loose(), t.set_meta("format", FORMAT_VERSION)))
        self.block_size = int(self.read(lambda t: t.meta("block_size")))
        # the dictionary fresh writes and the compactor use (None: none trained yet)
        self.dictionary: bytes | None = None
        dicts = self.read(lambda t: t.dictionaries())
        for data in dicts.values():
            add_dictionary(data)
        current = bytes.fromhex(self.read(lambda t: t.meta("dictionary")) or "")
        if current in dicts:
            self.dictionary = current

    def add_dictionary(self, data: bytes) -> bytes:
        """Keep zstd dictionary *data* in the store as the one to use from now
        on; returns its id."""
        did = add_dictionary(data)

        def put(t: Txn) -> None:
            t.txn.put(did, _pack_model(data), db=t.db["dicts"])
            t.set_meta("dictionary", did.hex())
        self.write(put)
        self.dictionary = did
        return did

    def _open_db(self, name: str):
        """A sub-database; None for one an older format lacks, opened read-only
        (it reads as empty)."""
        if not self.readonly:
            return self.env.open_db(name.encode())
        try:
            return self.env.open_db(name.encode(), create=False)
        except lmdb.NotFoundError:
            return None

    def cached_pack(self, pack: int) -> bytes | None:
        with self._packs_lock:
            value = self._packs.get(pack)
            if value is not None:
                self._packs.move_to_end(pack)
            return value

    def cache_pack(self, pack: int, value: bytes) -> None:
        with self._packs_lock:
            self._packs[pack] = value
            while len(self._packs) > _PACK_CACHE:
                self._packs.popitem(last=False)

    @classmethod
    def create(cls, path: Path | str, block_size: int, models: dict[bytes, bytes],
               uid: int | None = None, gid: int | None = None) -> "Store":
        """Make a new, empty store holding *models* (short id -> model file;
        the first is the default the compactor encodes with)."""
        path = Path(path)
        if block_size < 4096 or block_size > (1 << 24) or block_size & (block_size - 1):
            raise StoreError(f"block size {block_size}: must be a power of two, 4 KiB to 16 MiB")
        if (path / "data.mdb").exists():
            raise StoreError(f"{path}: already an llmfs store")
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path}: directory is not empty")
        path.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(path), map_size=_MIN_MAP, max_dbs=len(DATABASES) + 2)
        now = time.time_ns()
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name.encode(), txn=txn) for name in DATABASES}
            meta = {"format": FORMAT_VERSION, "block_size": block_size, "next_ino": ROOT_INO + 1,
                    "created_ns": now}
            if models:
                meta["model"] = next(iter(models)).hex()
            for k, v in meta.items():
                txn.put(k.encode(), str(v).encode(), db=dbs["meta"])
            root = Inode(0o40755, os.getuid() if uid is None else uid,
                         os.getgid() if gid is None else gid, 2,
                         atime_ns=now, mtime_ns=now, ctime_ns=now)
            txn.put(ino_key(ROOT_INO), seal(ino_key(ROOT_INO), root.pack()), db=dbs["inodes"])
            for short, data in models.items():
                txn.put(short, _pack_model(data), db=dbs["models"])
        env.close()
        return cls(path)

    def close(self) -> None:
        self.env.close()

    # -- transactions -----------------------------------------------------
    def read(self, fn: Callable[["Txn"], T]) -> T:
        try:
            with self._gate.shared(), self.env.begin(buffers=False) as txn:
                return fn(Txn(txn, self, write=False))
        except _LMDB_DAMAGE as e:
            raise DamagedRecord(f"LMDB page ({e})") from None

    def write(self, fn: Callable[["Txn"], T]) -> T:
        """Run *fn* in one write transaction; grow the map and retry when full.
        Disk full surfaces as ``OSError(ENOSPC)`` with nothing committed."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        ticked = False
        for _ in range(40):
            try:
                with self._gate.shared(), self.env.begin(write=True) as txn:
                    return fn(Txn(txn, self, write=True))
            except lmdb.MapFullError:
                self._grow()
            except _LMDB_DAMAGE as e:
                raise DamagedRecord(f"LMDB page ({e})") from None
            except lmdb.Error as e:
                if not self._disk_full(e):
                    raise
                if ticked or not self._tick():
                    raise OSError(errno.ENOSPC, "store disk is full") from e
                ticked = True
        raise StoreError("store map could not grow")

    def _tick(self) -> bool:
        """Commit one tiny transaction; True when it went through.  LMDB reuses
        the pages a transaction freed only from the second transaction after
        it (it keeps the previous snapshot intact), so after files were
        deleted on a full disk the next large commit fails unless one small
        commit comes first."""
        try:
            with self._gate.shared(), self.env.begin(write=True) as txn:
                txn.put(b"tick", str(time.time_ns()).encode(), db=self.dbs["meta"])
            return True
        except lmdb.Error:
            return False

    def _disk_full(self, e: lmdb.Error) -> bool:
        """LMDB reports a short write at a full disk as EIO; tell the two apart."""
        if "No space left" in str(e):
            return True
        disk = os.statvfs(self.path)
        return disk.f_bavail * disk.f_frsize < _DISK_RESERVE

    def _grow(self) -> None:
        with self._gate.exclusive():
            self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def sync(self) -> None:
        self.env.sync(True)


class Txn:
    """Schema-level operations inside one LMDB transaction."""

    def __init__(self, txn: lmdb.Transaction, store: Store, write: bool) -> None:
        self.txn = txn
        self.store = store
        self.db = store.dbs
        self.writing = write

    def _get(self, name: str, key: bytes) -> bytes | None:
        db = self.db[name]
        return None if db is None else self.txn.get(key, db=db)

    # -- meta and counters -------------------------------------------------
    def meta(self, name: str) -> str | None:
        v = self.txn.get(name.encode(), db=self.db["meta"])
        return None if v is None else v.decode()

    def set_meta(self, name: str, value: object) -> None:
        self.txn.put(name.encode(), str(value).encode(), db=self.db["meta"])

    def count(self, name: str, delta: int = 1) -> None:
        key = name.encode()
        cur = self.txn.get(key, db=self.db["counters"])
        n = (int.from_bytes(cur, "little") if cur else 0) + delta
        self.txn.put(key, n.to_bytes(8, "little"), db=self.db["counters"])

    def counters(self) -> dict[str, int]:
        return {k.decode(): int.from_bytes(v, "little")
                for k, v in self.txn.cursor(db=self.db["counters"])}

    # -- inodes ----------------------------------------------------------------
    def new_ino(self) -> int:
        ino = int(self.meta("next_ino"))
        self.set_meta("next_ino", ino + 1)
        return ino

    @staticmethod
    def _inode_record(k: bytes, v: bytes) -> Inode | None:
        """The inode stored as *v* under *k*, None when damaged."""
        value = unseal(k, v, INODE_SIZE)
        return None if value is None else Inode.unpack(value)

    def inode(self, ino: int) -> Inode | None:
        k = ino_key(ino)
        v = self.txn.get(k, db=self.db["inodes"])
        if v is None:
            return None
        inode = self._inode_record(k, v)
        if inode is None:
            raise DamagedRecord(f"inode {ino}")
        return inode

    def put_inode(self, ino: int, inode: Inode) -> None:
        k = ino_key(ino)
        self.txn.put(k, seal(k, inode.pack()), db=self.db["inodes"])

    def drop_inode(self, ino: int) -> None:
        """Delete an inode and everything hanging off it (blocks are unreferenced)."""
        self.truncate_blocks(ino, 0)
        k = ino_key(ino)
        for name in ("inodes", "symlinks", "orphans"):
            self.txn.delete(k, db=self.db[name])
        for name in self.xattr_names(ino):
            self.txn.delete(k + name, db=self.db["xattrs"])

    def inode_count(self) -> int:
        return self.txn.stat(self.db["inodes"])["entries"]

    def set_orphan(self, ino: int, orphan: bool, parent: int = 0, name: bytes = b"") -> None:
        """Mark *ino* as needing removal after a crash: unlinked while open
        (no name), or living under a temporary *name* in *parent*."""
        if orphan:
            where = ino_key(parent) + name if name else b""
            self.txn.put(ino_key(ino), where, db=self.db["orphans"])
        else:
            self.txn.delete(ino_key(ino), db=self.db["orphans"])

    def orphans(self) -> list[tuple[int, int, bytes]]:
        """(ino, parent, name) of each orphan; parent 0 when it has no name."""
        return [(ino_of(k), ino_of(v) if v else 0, v[8:])
                for k, v in self.txn.cursor(db=self.db["orphans"])]

    # -- directory entries -------------------------------------------------
    @staticmethod
    def _entry_child(k: bytes, v: bytes) -> int | None:
        """The inode a directory entry stored as *v* under *k* names, None when damaged."""
        value = unseal(k, v, INO_SIZE)
        return None if value is None else ino_of(value)

    def _entry_ino(self, k: bytes, v: bytes) -> int:
        child = self._entry_child(k, v)
        if child is None:
            raise DamagedRecord(f"entry {k[8:]!r} of directory {ino_of(k)}")
        return child

    def lookup(self, parent: int, name: bytes) -> int | None:
        k = ino_key(parent) + name
        v = self.txn.get(k, db=self.db["dirents"])
        return None if v is None else self._entry_ino(k, v)

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        k = ino_key(parent) + name
        self.txn.put(k, seal(k, ino_key(ino)), db=self.db["dirents"])

    def del_entry(self, parent: int, name: bytes) -> None:
        self.txn.delete(ino_key(parent) + name, db=self.db["dirents"])

    def entries(self, parent: int) -> Iterator[tuple[bytes, int]]:
        prefix = ino_key(parent)
        cur = self.txn.cursor(db=self.db["dirents"])
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                yield k[8:], self._entry_ino(k, v)

    def has_entries(self, parent: int) -> bool:
        return next(self.entries(parent), None) is not None

    # -- symlinks and xattrs -------------------------------------------------
    def symlink(self, ino: int) -> bytes | None:
        return self.txn.get(ino_key(ino), db=self.db["symlinks"])

    def set_symlink(self, ino: int, target: bytes) -> None:
        self.txn.put(ino_key(ino), target, db=self.db["symlinks"])

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        return self.txn.get(ino_key(ino) + name, db=self.db["xattrs"])

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.txn.put(ino_key(ino) + name, value, db=self.db["xattrs"])

    def del_xattr(self, ino: int, name: bytes) -> bool:
        return self.txn.delete(ino_key(ino) + name, db=self.db["xattrs"])

    def xattr_names(self, ino: int) -> list[bytes]:
        prefix = ino_key(ino)
        cur = self.txn.cursor(db=self.db["xattrs"])
        out = []
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if not k.startswith(prefix):
                    break
                out.append(k[8:])
        return out

    # -- file blocks -----------------------------------------------------------
    @staticmethod
    def map_value(k: bytes, v: bytes) -> bytes:
        """The block key of a block map record (DAMAGED when its seal is wrong)."""
        key = unseal(k, v, KEY_SIZE)
        return DAMAGED if key is None else key

    def block_keys(self, ino: int, first: int, last: int) -> dict[int, bytes]:
        """Block keys of blocks first..last (inclusive) of a file; holes are
        absent, damaged entries are DAMAGED (they read as a missing block)."""
        out: dict[int, bytes] = {}
        cur = self.txn.cursor(db=self.db["fmap"])
        end = fmap_key(ino, last)
        if cur.set_range(fmap_key(ino, first)):
            for k, v in cur:
                if k > end:
                    break
                out[fmap_index(k)] = self.map_value(k, v)
        return out

    def map_matches(self, ino: int, inode: Inode) -> bool:
        """Whether the block map of *ino* has as many entries as the inode
        counts, all below its size: a hole in a file whose map does not match
        may be an entry lost to damage, not a hole."""
        n, top = 0, -1
        prefix = ino_key(ino)
        cur = self.txn.cursor(db=self.db["fmap"])
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if not k.startswith(prefix):
                    break
                n, top = n + 1, max(top, fmap_index(k))   # a damaged key may be out of order
        return n == inode.nblocks and top * self.store.block_size < max(inode.size, 1)

    def has_block(self, key: bytes) -> bool:
        return self.txn.get(key, db=self.db["refs"]) is not None

    def set_block(self, ino: int, index: int, key: bytes, frame: bytes | None) -> int:
        """Map block *index* of *ino* to *key*, storing *frame* if the block is
        new (``frame`` may be None only when :meth:`has_block`).  Returns the
        change in the file's stored block count (0 or 1)."""
        fk = fmap_key(ino, index)
        old = self.txn.get(fk, db=self.db["fmap"])
        if old is not None:
            old = self.map_value(fk, old)
        if old == key:
            return 0
        ref = self.txn.get(key, db=self.db["refs"])
        if ref is None:
            if frame is None:
                raise KeyError("block is not stored and no frame was given")
            self.txn.put(key, frame, db=self.db["blocks"])
            self.txn.put(key, pack_ref(1, time.time_ns()), db=self.db["refs"])
        else:
            n, written = unpack_ref(ref)
            self.txn.put(key, pack_ref(n + 1, written), db=self.db["refs"])
        self.txn.put(fk, seal(fk, key), db=self.db["fmap"])
        if old is not None:
            self._unref(old)
            return 0
        return 1

    def clear_block(self, ino: int, index: int) -> int:
        """Make block *index* a hole; returns the change in stored block count."""
        fk = fmap_key(ino, index)
        old = self.txn.get(fk, db=self.db["fmap"])
        if old is None:
            return 0
        self.txn.delete(fk, db=self.db["fmap"])
        self._unref(self.map_value(fk, old))
        return -1

    def truncate_blocks(self, ino: int, first: int) -> int:
        """Drop blocks first.. of a file; returns how many were dropped."""
        gone = list(self.block_keys(ino, first, (1 << 64) - 1).items())
        for index, key in gone:
            self.txn.delete(fmap_key(ino, index), db=self.db["fmap"])
            self._unref(key)
        return len(gone)

    # -- whole tables, for tools (damaged records come as None / DAMAGED) --
    def all_inodes(self) -> Iterator[tuple[int, Inode | None]]:
        for k, v in self.txn.cursor(db=self.db["inodes"]):
            yield ino_of(k), self._inode_record(k, v)

    def all_entries(self) -> Iterator[tuple[int, bytes, int | None]]:
        for k, v in self.txn.cursor(db=self.db["dirents"]):
            yield ino_of(k), k[8:], self._entry_child(k, v)

    def all_block_maps(self) -> Iterator[tuple[int, int, bytes]]:
        for k, v in self.txn.cursor(db=self.db["fmap"]):
            yield ino_of(k), fmap_index(k), self.map_value(k, v)

    def scan(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of sub-database *name*, in key order (for tools)."""
        db = self.db[name]
        return iter(()) if db is None else iter(self.txn.cursor(db=db))

    def scan_from(self, name: str, key: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of *name* from *key* on (inclusive), in key order."""
        cur = self.txn.cursor(db=self.db[name])
        return iter(cur) if cur.set_range(key) else iter(())

    def stored_blocks(self) -> Iterator[bytes]:
        """Every stored block key, loose ones first."""
        yield from self.txn.cursor(db=self.db["blocks"]).iternext(values=False)
        yield from (k for k, _ in self.scan("packidx"))

    def mark_tried(self, key: bytes, tag: bytes) -> None:
        """Remember that the encoding models *tag* did not shrink block *key*
        (cleared whenever its refcount changes); the compactor is done with
        its frame, which may go into a pack."""
        ref = self.txn.get(key, db=self.db["refs"])
        if ref is not None:
            self.txn.put(key, pack_ref(*unpack_ref(ref), tag), db=self.db["refs"])
            self.settle([key])

    def replace_frame(self, key: bytes, frame: bytes) -> bool:
        """Swap the stored frame of a block (the compactor's re-encode); False
        when the block is no longer stored.  The new frame is loose, waiting
        for a pack."""
        if self.txn.get(key, db=self.db["refs"]) is None:
            return False
        self._drop_frame(key)
        self.txn.put(key, frame, db=self.db["blocks"])
        self.txn.put(key, b"", db=self.db["unpacked"])
        return True

    # -- frames, loose and packed --------------------------------------------
    def frame(self, key: bytes) -> bytes | None:
        """The frame of block *key*; None when it is not stored, or its pack
        index record or pack is damaged (a missing block: EIO)."""
        loose = self.txn.get(key, db=self.db["blocks"])
        if loose is not None:
            return loose
        where = self.where(key)
        if where is None:
            return None
        value = self.pack_value(where.pack)
        if value is None or where.offset + where.length > len(value):
            return None
        return value[where.offset:where.offset + where.length]

    def frame_head(self, key: bytes) -> Head | None:
        """The header fields of block *key*'s frame, without reading a pack;
        None when not stored or damaged."""
        found = self.frame_stat(key)
        return None if found is None else found[0]

    def frame_stat(self, key: bytes) -> tuple[Head, int] | None:
        """(header fields, stored length) of block *key*'s frame, without
        reading a pack; None when not stored or damaged."""
        loose = self.txn.get(key, db=self.db["blocks"])
        if loose is not None:
            try:
                return frame_head(loose), len(loose)
            except FrameError:
                return None
        where = self.where(key)
        return None if where is None else (where.head, where.length)

    def where(self, key: bytes) -> Where | None:
        """Where block *key* is packed; None when it is not, or when the
        index record is damaged."""
        v = self._get("packidx", key)
        if v is None:
            return None
        value = unseal(key, v, WHERE_SIZE)
        try:
            return None if value is None else Where.unpack(value)
        except ValueError:      # a codec id no frame has
            return None

    def pack_value(self, pack: int) -> bytes | None:
        """A pack's bytes (kept in memory between transactions: packs never change)."""
        value = self.store.cached_pack(pack)
        if value is None:
            value = self._get("packs", ino_key(pack))
            if value is not None and not self.writing:   # a write may still be rolled back
                self.store.cache_pack(pack, value)
        return value

    def fill(self, pack: int) -> Fill | None:
        v = self._get("packfill", ino_key(pack))
        value = None if v is None else unseal(ino_key(pack), v, FILL_SIZE)
        return None if value is None else Fill.unpack(value)

    def pack_fills(self) -> Iterator[tuple[int, Fill | None]]:
        """(pack id, fill) of every pack; None for a damaged fill record."""
        for k, _ in self.scan("packfill"):
            yield ino_of(k), self.fill(ino_of(k))

    def _put_fill(self, pack: int, fill: Fill) -> None:
        k = ino_key(pack)
        self.txn.put(k, seal(k, fill.pack()), db=self.db["packfill"])

    def _drop_pack(self, pack: int) -> None:
        """Delete a pack and its fill and rewrite records."""
        k = ino_key(pack)
        for name in ("packs", "packfill", "sparse"):
            self.txn.delete(k, db=self.db[name])

    def _drop_frame(self, key: bytes) -> None:
        """Remove block *key*'s frame, loose or packed; a pack with nothing
        left goes at once, one mostly dead is queued for a rewrite."""
        if self.txn.delete(key, db=self.db["blocks"]):
            self.txn.delete(key, db=self.db["unpacked"])
            return
        where = self.where(key)
        if not self.txn.delete(key, db=self.db["packidx"]) or where is None:
            return
        fill = self.fill(where.pack)
        if fill is None:
            return          # damaged: fsck recounts
        fill.live_bytes -= where.length
        fill.live_frames -= 1
        if fill.live_frames <= 0:
            self._drop_pack(where.pack)
            return
        self._put_fill(where.pack, fill)
        if fill.sparse:
            self.txn.put(ino_key(where.pack), b"", db=self.db["sparse"])

    def all_frames(self) -> Iterator[tuple[bytes, bytes | None]]:
        """(key, frame) of every stored block, loose ones first; a packed
        frame that cannot be read comes as None."""
        yield from self.txn.cursor(db=self.db["blocks"])
        for key, _ in self.scan("packidx"):
            yield key, self.frame(key)

    def frame_index(self) -> Iterator[tuple[bytes, Head | None, int]]:
        """(key, header fields, stored length) of every stored block, without
        reading packs; the header is None for a damaged one (or its index record)."""
        for key, frame in self.txn.cursor(db=self.db["blocks"]):
            try:
                yield key, frame_head(frame), len(frame)
            except FrameError:
                yield key, None, len(frame)
        for key, _ in self.scan("packidx"):
            where = self.where(key)
            yield key, None if where is None else where.head, 0 if where is None else where.length

    def backlog(self) -> int:
        """Loose frames the compactor has not finished with (fresh writes)."""
        listed = self.db["unpacked"]
        return self.txn.stat(self.db["blocks"])["entries"] - (
            0 if listed is None else self.txn.stat(listed)["entries"])

    def unlisted(self, key: bytes) -> bool:
        """Whether block *key* has a loose frame not yet listed for packing."""
        return self.txn.get(key, db=self.db["blocks"]) is not None \
            and self._get("unpacked", key) is None

    def settle(self, keys: list[bytes]) -> None:
        """List the loose frames of *keys* for packing (blocks the compactor
        is done with)."""
        for key in keys:
            if self.txn.get(key, db=self.db["blocks"]) is not None:
                self.txn.put(key, b"", db=self.db["unpacked"])

    def adopt_loose(self) -> int:
        """List the loose frames the compactor is done with for packing
        (llm and raw frames and those marked tried: a store of the format
        before packs, or the end of an offline compaction); returns how many."""
        n = 0
        for key, ref in self.scan("refs"):
            frame = self.txn.get(key, db=self.db["blocks"])
            if frame is None or self._get("unpacked", key) is not None:
                continue
            try:
                done = ref_tried(ref) != b"" or frame_head(frame).codec in (Codec.LLM, Codec.RAW)
            except FrameError:
                continue
            if done:
                self.txn.put(key, b"", db=self.db["unpacked"])
                n += 1
        return n

    def pack_loose(self, target: int, flush: bool = False,
                   most: int = 4) -> int:
        """Move the loose frames the compactor is done with into new packs of
        at least *target* bytes, at most *most* of them; with *flush* the
        rest too.  Returns the number of frames packed."""
        group: list[tuple[bytes, bytes]] = []
        size = written = done = 0
        for key, _ in list(self.scan("unpacked")):
            frame = self.txn.get(key, db=self.db["blocks"])
            if frame is None:          # gone or packed since: a stale entry
                self.txn.delete(key, db=self.db["unpacked"])
                continue
            group.append((key, frame))
            size += len(frame)
            if size >= target:
                done += self._write_pack(group)
                group, size = [], 0
                written += 1
                if written >= most:
                    return done
        if group and flush:
            done += self._write_pack(group)
        return done

    def _write_pack(self, frames: list[tuple[bytes, bytes]]) -> int:
        pack = int(self.meta("next_pack") or 1)
        self.set_meta("next_pack", pack + 1)
        value, places = packs.build(frames)
        k = ino_key(pack)
        self.txn.put(k, value, db=self.db["packs"])
        for (key, frame), (_, offset, length) in zip(frames, places):
            where = Where(pack, offset, length, frame_head(frame))
            self.txn.put(key, seal(key, where.pack_record()), db=self.db["packidx"])
            self.txn.delete(key, db=self.db["blocks"])
            self.txn.delete(key, db=self.db["unpacked"])
        total = sum(p[2] for p in places)
        self._put_fill(pack, Fill(total, len(places), total, len(places)))
        return len(frames)

    def live_frames(self, pack: int) -> list[tuple[bytes, bytes]]:
        """(key, frame) of the frames of *pack* its index still names."""
        value = self.pack_value(pack)
        if value is None:
            return []
        out = []
        for key, offset, length in packs.directory(value):
            where = self.where(key)
            if where is not None and (where.pack, where.offset, where.length) == \
                    (pack, offset, length):
                out.append((key, value[offset:offset + length]))
        return out

    def repack_sparse(self, most: int = 1) -> int:
        """Rewrite up to *most* packs that are mostly dead: their live frames
        become loose (to be packed with others) and the pack goes.  Returns
        the number of frames copied out."""
        moved = 0
        for k, _ in list(self.scan("sparse"))[:most]:
            pack = ino_of(k)
            try:
                live = self.live_frames(pack)
            except PackError:      # fsck reports the pack's frames as damaged
                self.txn.delete(k, db=self.db["sparse"])
                continue
            for key, frame in live:
                self.txn.delete(key, db=self.db["packidx"])
                self.txn.put(key, frame, db=self.db["blocks"])
                self.txn.put(key, b"", db=self.db["unpacked"])
            self._drop_pack(pack)
            moved += len(live)
        return moved

    # -- repairs (fsck): change one structure without the usual bookkeeping --
    def unmap_block(self, ino: int, index: int) -> None:
        """Remove a block map entry without touching the block's refcount."""
        self.txn.delete(fmap_key(ino, index), db=self.db["fmap"])

    def drop_block(self, key: bytes) -> None:
        """Remove a stored block and its refcount, whatever references it."""
        self._drop_frame(key)
        self.txn.delete(key, db=self.db["packidx"])   # a damaged index record too
        self.txn.delete(key, db=self.db["refs"])

    def set_refcount(self, key: bytes, count: int) -> None:
        ref = self.txn.get(key, db=self.db["refs"])
        written = unpack_ref(ref)[1] if ref is not None else 0
        self.txn.put(key, pack_ref(count, written), db=self.db["refs"])

    def pack_census(self) -> dict[int, Fill]:
        """What every pack's fill record should say, counted from the index
        (live) and the packs' directories (total); a pack no index record
        names counts as all dead."""
        out: dict[int, Fill] = {}
        for k, value in self.scan("packs"):
            try:
                d = packs.directory(value)
            except PackError:
                d = []
            out[ino_of(k)] = Fill(0, 0, sum(e[2] for e in d), len(d))
        for key, _ in self.scan("packidx"):
            where = self.where(key)
            if where is not None and where.pack in out:
                out[where.pack].live_bytes += where.length
                out[where.pack].live_frames += 1
        return out

    def recount_packs(self) -> int:
        """Make every fill record what :meth:`pack_census` counts, delete
        packs nothing lives in and fills of packs that are gone; returns
        how many records changed."""
        census = self.pack_census()
        changed = 0
        for pack, fill in census.items():
            if fill.live_frames == 0:
                self._drop_pack(pack)
                changed += 1
                continue
            fill.total_bytes = max(fill.total_bytes, fill.live_bytes)
            fill.total_frames = max(fill.total_frames, fill.live_frames)
            if self.fill(pack) != fill:
                self._put_fill(pack, fill)
                changed += 1
            if fill.sparse:
                self.txn.put(ino_key(pack), b"", db=self.db["sparse"])
        for name in ("packfill", "sparse"):
            for k, _ in list(self.scan(name)):
                if ino_of(k) not in census:
                    self.txn.delete(k, db=self.db[name])
                    changed += 1
        return changed

    def _unref(self, key: bytes) -> None:
        ref = self.txn.get(key, db=self.db["refs"])
        if ref is None:
            return
        n, written = unpack_ref(ref)
        if n <= 1:
            self.txn.delete(key, db=self.db["refs"])
            self._drop_frame(key)
        else:
            self.txn.put(key, pack_ref(n - 1, written), db=self.db["refs"])

    # -- models ------------------------------------------------------------
    def _hashed(self, name: str, what: str) -> dict[bytes, bytes]:
        """The records of *name* kept by hash id, damaged ones left out (logged)."""
        out = {}
        for k, v in self.scan(name):
            data = _unpack_model(k, v)
            if data is None:
                log.error("%s %s: damaged record in the store (run llmfs fsck)", what, k.hex())
            else:
                out[k] = data
        return out

    def models(self) -> dict[bytes, bytes]:
        """Model files by short id (kept zstd-compressed: a model is megabytes
        of integer tables that compress 2.4x, and every store carries one).
        A damaged model is left out (logged): its blocks read as EIO."""
        return self._hashed("models", "model")

    def damaged_models(self) -> list[bytes]:
        """Short ids of the models whose record is damaged."""
        return [k for k, v in self.scan("models") if _unpack_model(k, v) is None]

    def dictionaries(self) -> dict[bytes, bytes]:
        """The store's zstd dictionaries by id; a damaged one is left out
        (logged): its blocks read as EIO."""
        return self._hashed("dicts", "dictionary")

    def damaged_dictionaries(self) -> list[bytes]:
        return [k for k, v in self.scan("dicts") if _unpack_model(k, v) is None]

    def model_ids(self) -> list[bytes]:
        """Short ids of the models kept (without decompressing them)."""
        return list(self.txn.cursor(db=self.db["models"]).iternext(values=False))

    def put_model(self, short_id: bytes, data: bytes) -> None:
        self.txn.put(short_id, _pack_model(data), db=self.db["models"])

    def encode_models(self) -> list[bytes]:
        """Short ids of the models blocks are encoded with, preferred first
        (meta ``model``: comma-separated hex; each block keeps the smallest)."""
        return [bytes.fromhex(h) for h in (self.meta("model") or "").split(",") if h]

    def set_encode_models(self, ids: list[bytes]) -> None:
        self.set_meta("model", ",".join(i.hex() for i in ids))

    def codec_models(self) -> tuple[list[bytes], int]:
        """Every model file of the store, the encoding ones first in order of
        preference, and how many encode: ``BlockCodec.from_model_files`` input."""
        files = self.models()
        enc = [m for m in self.encode_models() if m in files]
        return [files[m] for m in enc] + [d for m, d in files.items() if m not in enc], len(enc)
