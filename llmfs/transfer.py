"""Bulk copy between a directory tree and a store, without FUSE
(``llmfs import`` / ``llmfs export``).

Kept: file types (regular, directory, symlink, FIFO, devices, sockets),
modes, owners, atime/mtime (nanoseconds), hard links, xattrs, holes.  Import
writes each file as zstd blocks (the write tier; the compactor re-encodes
later) in transactions of ``_CHUNK_BLOCKS`` blocks; export decodes blocks in
batches, so llm blocks go to the model together.
"""
from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from .codec.plain import decode_plain, fast_frame
from .store import ROOT_INO, Inode, Store, Txn, block_key

_CHUNK_BLOCKS = 64


class TransferError(Exception):
    """An import or export that cannot go on; the message names the path."""


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith("system."):
            continue
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            pass
    return out


def tree_size(src: Path) -> int:
    total = 0
    for root, _, files in os.walk(src):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def import_tree(store: Store, src: Path, level: int = 1,
                progress: Callable[[int], None] = lambda n: None) -> int:
    """Copy the contents of directory *src* into the store's root; returns the
    number of entries created."""
    bs = store.block_size
    seen: dict[tuple[int, int], int] = {}     # (st_dev, st_ino) -> our inode
    count = 0

    def new_inode(t: Txn, st: os.stat_result, nlink: int, size: int = 0) -> tuple[int, Inode]:
        ino = t.new_ino()
        inode = Inode(st.st_mode, st.st_uid, st.st_gid, nlink, size=size, rdev=st.st_rdev,
                      atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=time.time_ns())
        t.put_inode(ino, inode)
        return ino, inode

    def add(t: Txn, parent: int, name: bytes, ino: int) -> None:
        if t.lookup(parent, name) is not None:
            raise TransferError(f"{name.decode(errors='replace')}: already in the store")
        t.add_entry(parent, name, ino)

    def copy_file(parent: int, name: bytes, path: Path, st: os.stat_result,
                  xattrs: dict[str, bytes]) -> None:
        with open(path, "rb") as f:
            ino = store.write(lambda t: create_file(t, parent, name, st, xattrs))
            index = 0
            while True:
                chunk = []
                for _ in range(_CHUNK_BLOCKS):
                    data = f.read(bs)
                    if not data:
                        break
                    chunk.append(data)
                if not chunk:
                    break
                frames = [(block_key(d), fast_frame(d, level, store.dictionary))
                          if d.strip(b"\0") else None for d in chunk]
                store.write(lambda t, i=index, c=chunk, fr=frames: _put_blocks(t, ino, i, c, fr))
                progress(sum(map(len, chunk)))
                index += len(chunk)

    def create_file(t: Txn, parent: int, name: bytes, st: os.stat_result,
                    xattrs: dict[str, bytes]) -> int:
        ino, _ = new_inode(t, st, 1, st.st_size)
        add(t, parent, name, ino)
        for k, v in xattrs.items():
            t.set_xattr(ino, os.fsencode(k), v)
        seen[(st.st_dev, st.st_ino)] = ino
        return ino

    def walk(parent: int, directory: Path) -> None:
        nonlocal count
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = Path(entry.path)
            st = os.lstat(path)
            name = os.fsencode(entry.name)
            count += 1
            if (st.st_dev, st.st_ino) in seen and not stat.S_ISDIR(st.st_mode):
                ino = seen[(st.st_dev, st.st_ino)]

                def link(t: Txn) -> None:
                    add(t, parent, name, ino)
                    inode = t.inode(ino)
                    inode.nlink += 1
                    t.put_inode(ino, inode)
                store.write(link)
                continue
            xattrs = _xattrs(path)
            if stat.S_ISREG(st.st_mode):
                copy_file(parent, name, path, st, xattrs)
                continue

            def make(t: Txn) -> int:
                ino, inode = new_inode(t, st, 2 if stat.S_ISDIR(st.st_mode) else 1)
                if stat.S_ISLNK(st.st_mode):
                    target = os.fsencode(os.readlink(path))
                    t.set_symlink(ino, target)
                    inode.size = len(target)
                    t.put_inode(ino, inode)
                add(t, parent, name, ino)
                for k, v in xattrs.items():
                    t.set_xattr(ino, os.fsencode(k), v)
                if stat.S_ISDIR(st.st_mode):
                    pinode = t.inode(parent)
                    pinode.nlink += 1
                    t.put_inode(parent, pinode)
                return ino
            ino = store.write(make)
            seen[(st.st_dev, st.st_ino)] = ino
            if stat.S_ISDIR(st.st_mode):
                walk(ino, path)
                store.write(lambda t, i=ino, s=st: _restore_times(t, i, s))

    if not src.is_dir():
        raise TransferError(f"{src}: not a directory")
    walk(ROOT_INO, src)
    return count


def _restore_times(t: Txn, ino: int, st: os.stat_result) -> None:
    inode = t.inode(ino)
    inode.atime_ns, inode.mtime_ns = st.st_atime_ns, st.st_mtime_ns
    t.put_inode(ino, inode)


def _put_blocks(t: Txn, ino: int, first: int, chunk: list[bytes], frames: list) -> None:
    inode = t.inode(ino)
    for i, fr in enumerate(frames):
        if fr is not None:
            inode.nblocks += t.set_block(ino, first + i, fr[0], fr[1])
    t.put_inode(ino, inode)


def export_tree(store: Store, dst: Path, decode: Callable[[list[bytes]], list],
                progress: Callable[[int], None] = lambda n: None) -> int:
    """Write the store's tree into directory *dst* (created; must be empty);
    *decode* turns llm frames into bytes (or FrameError).  Returns entries written."""
    if dst.exists() and any(dst.iterdir()):
        raise TransferError(f"{dst}: not empty")
    dst.mkdir(parents=True, exist_ok=True)
    bs = store.block_size
    written: dict[int, Path] = {}
    dirs: list[tuple[Path, Inode]] = []
    count = 0
    as_root = os.geteuid() == 0

    def finish(path: Path, ino: int, inode: Inode) -> None:
        for name in store.read(lambda t: t.xattr_names(ino)):
            value = store.read(lambda t: t.xattr(ino, name))
            os.setxattr(path, name, value, follow_symlinks=False)
        if as_root:
            os.lchown(path, inode.uid, inode.gid)
        if not stat.S_ISLNK(inode.mode):
            os.chmod(path, stat.S_IMODE(inode.mode))
        os.utime(path, ns=(inode.atime_ns, inode.mtime_ns), follow_symlinks=False)

    def write_file(path: Path, ino: int, inode: Inode) -> None:
        with open(path, "wb") as f:
            for first in range(0, max(1, -(-inode.size // bs)), _CHUNK_BLOCKS):
                last = first + _CHUNK_BLOCKS - 1
                keys = store.read(lambda t: t.block_keys(ino, first, last))
                frames = store.read(lambda t: {i: t.frame(k) for i, k in keys.items()})
                plain = {i: decode_plain(fr) for i, fr in frames.items() if fr is not None}
                llm = [i for i, r in plain.items() if isinstance(r, Exception)
                       and "needs the model" in str(r)]
                for i, r in zip(llm, decode([frames[i] for i in llm]) if llm else []):
                    plain[i] = r
                for i in sorted(keys):
                    data = plain.get(i)
                    if data is None or isinstance(data, Exception):
                        raise TransferError(f"{path}: block {i} is unreadable ({data}); "
                                            "run llmfs fsck")
                    f.seek(i * bs)
                    f.write(data)
                    progress(len(data))
            f.truncate(inode.size)

    def walk(ino: int, directory: Path) -> None:
        nonlocal count
        for name, child in store.read(lambda t: list(t.entries(ino))):
            inode = store.read(lambda t: t.inode(child))
            if inode is None:
                continue
            path = directory / os.fsdecode(name)
            count += 1
            if child in written:
                os.link(written[child], path, follow_symlinks=False)
                continue
            mode = inode.mode
            if stat.S_ISDIR(mode):
                path.mkdir()
                walk(child, path)
                dirs.append((path, inode))
                for n in store.read(lambda t: t.xattr_names(child)):
                    os.setxattr(path, n, store.read(lambda t: t.xattr(child, n)))
                continue
            if stat.S_ISREG(mode):
                write_file(path, child, inode)
            elif stat.S_ISLNK(mode):
                os.symlink(os.fsdecode(store.read(lambda t: t.symlink(child))), path)
            elif stat.S_ISFIFO(mode):
                os.mkfifo(path)
            else:
                try:
                    os.mknod(path, mode, inode.rdev)
                except PermissionError as e:
                    raise TransferError(f"{path}: cannot create device node: {e}") from None
            written[child] = path
            finish(path, child, inode)

    walk(ROOT_INO, dst)
    for path, inode in reversed(dirs):   # children first: their writes touched these
        if as_root:
            os.lchown(path, inode.uid, inode.gid)
        os.chmod(path, stat.S_IMODE(inode.mode))
        os.utime(path, ns=(inode.atime_ns, inode.mtime_ns))
    return count


__all__ = ["TransferError", "export_tree", "import_tree", "tree_size"]
