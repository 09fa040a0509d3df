"""The LMDB store without FUSE: schema, refcounted dedup, growth, faults."""
from __future__ import annotations

import errno
import os

import pytest

from llmfs.codec.plain import decode_plain, fast_frame
from llmfs.store import Inode, Store, StoreError, StoreLock, block_key
from llmfs.model import model_id
from llmfs.store.schema import FORMAT_VERSION, ROOT_INO

from conftest import tmpfs


MODEL_ID = model_id(b"model bytes")[:8]   # a store keeps models under their hash


def new_store(path) -> Store:
    return Store.create(path / "s", 65536, {MODEL_ID: b"model bytes"})


def put_file(store: Store, blocks: list[bytes]) -> int:
    def op(t):
        ino = t.new_ino()
        inode = Inode(0o100644, 0, 0, 1, size=sum(map(len, blocks)))
        for i, b in enumerate(blocks):
            inode.nblocks += t.set_block(ino, i, block_key(b), fast_frame(b))
        t.put_inode(ino, inode)
        return ino
    return store.write(op)


def test_create_and_reopen(tmp_path):
    s = new_store(tmp_path)
    root = s.read(lambda t: t.inode(ROOT_INO))
    assert root.is_dir and root.nlink == 2
    assert s.read(lambda t: t.models()) == {MODEL_ID: b"model bytes"}
    s.close()
    s = Store(tmp_path / "s")
    assert s.block_size == 65536
    s.close()
    with pytest.raises(StoreError, match="already an llmfs store"):
        new_store(tmp_path)
    with pytest.raises(StoreError, match="power of two"):
        Store.create(tmp_path / "t", 5000, {})


def test_identical_blocks_stored_once_and_freed(tmp_path):
    s = new_store(tmp_path)
    a, b = os.urandom(65536), b"x" * 1000
    f1 = put_file(s, [a, b])
    f2 = put_file(s, [a])
    stored = lambda: sorted(s.read(lambda t: list(t.stored_blocks())))  # noqa: E731
    assert stored() == sorted({block_key(a), block_key(b)})
    assert s.read(lambda t: t.inode(f1)).nblocks == 2
    s.write(lambda t: t.drop_inode(f1))
    assert stored() == [block_key(a)]          # still used by f2
    s.write(lambda t: t.truncate_blocks(f2, 0))
    assert stored() == []
    s.close()


def test_frames_round_trip_through_store(tmp_path):
    s = new_store(tmp_path)
    data = [b"", b"a", os.urandom(100), b"text " * 5000]
    ino = put_file(s, data)
    keys = s.read(lambda t: t.block_keys(ino, 0, 10))
    assert [decode_plain(s.read(lambda t: t.frame(keys[i])))
            for i in range(len(data))] == data
    s.close()


def test_map_grows_on_demand(tmp_path):
    s = new_store(tmp_path)
    s.env.set_mapsize(1 << 20)        # 1 MiB map; write 8 MiB of incompressible blocks
    blocks = [os.urandom(65536) for _ in range(128)]
    ino = put_file(s, blocks)
    assert s.env.info()["map_size"] > 8 << 20
    assert len(s.read(lambda t: t.block_keys(ino, 0, 1000))) == 128
    s.close()


def test_newer_format_is_refused(tmp_path):
    s = new_store(tmp_path)
    s.write(lambda t: t.set_meta("format", FORMAT_VERSION + 1))
    s.close()
    with pytest.raises(StoreError, match="newer than this llmfs"):
        Store(tmp_path / "s")


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not an llmfs store"):
        Store(tmp_path)
    with pytest.raises(StoreError, match="not an llmfs store"):
        StoreLock(tmp_path)


def test_second_user_is_refused(tmp_path):
    new_store(tmp_path).close()
    lock = StoreLock(tmp_path / "s")
    with pytest.raises(StoreError, match=f"in use by another llmfs process .pid {os.getpid()}"):
        StoreLock(tmp_path / "s")
    lock.release()
    StoreLock(tmp_path / "s").release()


@pytest.fixture()
def tiny_disk(tmp_path):
    with tmpfs(tmp_path / "tiny", "3m") as d:
        yield d


def test_disk_full_is_enospc_and_store_stays_consistent(tiny_disk):
    s = Store.create(tiny_disk / "s", 65536, {})
    keep = put_file(s, [b"kept " * 100])
    filled = []
    with pytest.raises(OSError) as e:
        for _ in range(100):
            filled.append(put_file(s, [os.urandom(65536) for _ in range(4)]))
    assert e.value.errno == errno.ENOSPC and filled
    s.close()
    s = Store(tiny_disk / "s")
    key = s.read(lambda t: t.block_keys(keep, 0, 0))[0]
    assert decode_plain(s.read(lambda t: t.frame(key))) == b"kept " * 100
    for _, _, key in s.read(lambda t: list(t.all_block_maps())):   # every block is stored
        assert s.read(lambda t: t.frame(key)) is not None
    # space freed by deleting files serves the very next large commit (LMDB
    # reuses freed pages only two transactions later; Store.write bridges that)
    s.write(lambda t: [t.drop_inode(ino) for ino in filled])
    again = [os.urandom(65536) for _ in range(4)]
    ino = put_file(s, again)
    keys = s.read(lambda t: t.block_keys(ino, 0, 3))
    assert [decode_plain(s.read(lambda t: t.frame(keys[i]))) for i in range(4)] == again
    s.close()
