"""Mounting: checks before the fork, the libfuse3 glue mfusepy lacks, logging.

mfusepy's libfuse3 callbacks drop what llmfs needs: rename flags
(RENAME_NOREPLACE / RENAME_EXCHANGE), the file handle of ftruncate / fchmod /
fchown / futimens (needed once an open file is unlinked), and UTIME_NOW /
UTIME_OMIT.  ``_FUSE`` passes them through.
"""
from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import subprocess
import sys
from pathlib import Path

import mfusepy

from ..cluster import HINT, available as cluster_available
from ..config import Config
from ..store import Store, StoreError, StoreLock
from .mounts import FSTYPE, fsname, mount_type
from .operations import LLMFS

log = logging.getLogger("llmfs")


class _FUSE(mfusepy.FUSE):
    def _path(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip) -> int | None:
        return fip.contents.fh if fip else None

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(self._path(old), self._path(new), flags)

    def truncate_fuse_3(self, path, length: int, fip) -> int:
        return self.operations.truncate(self._path(path), length, self._fh(fip))

    def chmod_fuse_3(self, path, mode: int, fip) -> int:
        return self.operations.chmod(self._path(path), mode, self._fh(fip))

    def chown_fuse_3(self, path, uid: int, gid: int, fip) -> int:
        uid = -1 if uid == 0xFFFFFFFF else uid
        gid = -1 if gid == 0xFFFFFFFF else gid
        return self.operations.chown(self._path(path), uid, gid, self._fh(fip))

    def utimens_fuse_3(self, path, buf, fip) -> int:
        times = None
        if buf:
            a, m = buf.contents.actime, buf.contents.modtime
            times = ((a.tv_sec, a.tv_nsec), (m.tv_sec, m.tv_nsec))
        return self.operations.utimens(self._path(path), times, self._fh(fip))

    def init_fuse_3(self, conn, config) -> None:
        if config:
            c = config.contents
            c.use_ino = 1         # our inode numbers, so hard links show as one file
            c.readdir_ino = 1
            c.nullpath_ok = 1     # with -o hard_remove: ops on unlinked files keep their handle
        super().init_fuse_3(conn, config)


def _clear_stale(mountpoint: str) -> None:
    """A daemon killed hard leaves its mount behind, answering 'Transport
    endpoint is not connected'; unmount it if it was llmfs's."""
    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return
        if mount_type(mountpoint) != FSTYPE:
            raise StoreError(f"{mountpoint}: a dead FUSE mount of another filesystem is in "
                             "the way (fusermount3 -u it)") from None
        log.warning("%s: clearing the mount of a daemon that died", mountpoint)
        r = subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, text=True)
        if r.returncode:
            raise StoreError(f"{mountpoint}: cannot clear the dead mount: "
                             f"{r.stderr.strip()}") from None


def setup_logging(foreground: bool, logfile: str | None, debug: bool = False) -> None:
    root = logging.getLogger()
    for old in root.handlers[:]:   # the CLI's default console handler
        root.removeHandler(old)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if logfile:
        handler: logging.Handler = logging.FileHandler(logfile)
    elif foreground or not Path("/dev/log").exists():
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.SysLogHandler("/dev/log")
    handler.setFormatter(logging.Formatter("%(asctime)s llmfs[%(process)d] %(levelname)s "
                                           "%(name)s: %(message)s"))
    root.addHandler(handler)
    logging.getLogger("mfusepy").setLevel(logging.DEBUG if debug else logging.WARNING)


def mount(store: str, mountpoint: str, config: Config, foreground: bool = False,
          fuse_options: dict | None = None, debug: bool = False) -> None:
    """Mount *store* at *mountpoint*; returns when unmounted (foreground) or
    once the daemon runs (background).  Raises StoreError for a store that
    cannot be served (missing, in use, newer format)."""
    store = os.path.abspath(store)
    lock = StoreLock(store)          # held across the daemon's fork
    try:
        # held lock: no live daemon serves this store, so a dead mount of it is stale
        _clear_stale(mountpoint)
        if not os.path.isdir(mountpoint):
            raise StoreError(f"{mountpoint}: mount point is not a directory")
        Store(store, readonly=True).close()   # format check before anything is mounted
        if config.compact and config.compact_cluster and not cluster_available():
            raise StoreError(f"compact_cluster = {config.compact_cluster}: {HINT}")
    except BaseException:
        lock.release()
        raise
    ops = LLMFS(store, config, lock)
    # attr_timeout=0: libfuse's path API gives each name of a hard-linked file
    # its own kernel inode, so cached attributes (nlink, ctime) of the other
    # names would go stale for the timeout after link/unlink.
    options = {"fsname": fsname(store), "subtype": "llmfs", "default_permissions": True,
               "attr_timeout": 0}
    if os.getuid() == 0:
        options["allow_other"] = True
    options.update(fuse_options or {})
    debug = debug or bool(options.pop("debug", False))
    try:
        _FUSE(ops, mountpoint, foreground=foreground, debug=debug, **options)
    except RuntimeError as e:
        if not ops.unmounted:   # libfuse also reports an exit by SIGTERM/SIGINT as an error
            raise StoreError(f"{mountpoint}: mount failed (libfuse error {e})") from None
    finally:
        lock.release()
