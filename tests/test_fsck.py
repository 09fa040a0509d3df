"""fsck finds injected faults, repairs what it can, and says what was lost."""
from __future__ import annotations

import os
import subprocess
import sys

from llmfs.codec.frame import Frame
from llmfs.store import Inode, Store

from conftest import Mounted

BS = 4096


def fsck(store, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmfs.cli", "fsck", str(store), *args],
                          capture_output=True, text=True)


def test_fsck_finds_and_repairs_injected_faults(tmp_path):
    m = Mounted(tmp_path)
    m.mkfs("--block-size", str(BS))
    m.start()
    a = os.urandom(3 * BS)
    b = b"".join(os.urandom(BS // 2) * 2 for _ in range(3))   # three zstd blocks
    m.path("a").write_bytes(a)
    m.path("a2").write_bytes(a[:BS])                            # shares a's first block
    m.path("b").write_bytes(b)
    os.mkdir(m.path("d"))
    m.stop()
    r = fsck(m.store)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr

    s = Store(m.store)
    ino_a = s.read(lambda t: t.lookup(1, b"a"))
    ino_b = s.read(lambda t: t.lookup(1, b"b"))
    ka = s.read(lambda t: t.block_keys(ino_a, 0, 0))[0]
    kb = s.read(lambda t: t.block_keys(ino_b, 0, 2))

    def inject(t) -> None:
        t.set_refcount(ka, 5)                                   # wrong refcount
        t.drop_block(kb[0])                                     # missing block
        f = Frame.unpack(t.frame(kb[1]))
        damaged = bytearray(t.frame(kb[1]))
        damaged[-1] ^= 0x10                                     # flipped payload bit
        t.txn.put(kb[1], bytes(damaged), db=t.db["blocks"])
        assert f.payload[-1] != damaged[-1]
        lost = t.new_ino()                                      # inode in no directory
        t.put_inode(lost, Inode(0o100644, 0, 0, 1))
    s.write(inject)
    s.close()

    r = fsck(m.store)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "refcount 5, referenced 2 times" in r.stdout
    assert "is missing" in r.stdout and "not in any directory" in r.stdout
    assert "checksum" not in r.stdout                           # only a scrub decodes
    r = fsck(m.store, "--scrub", "--workers", "1")
    assert r.returncode == 4 and "checksum mismatch" in r.stdout, r.stdout

    r = fsck(m.store, "--repair", "--scrub", "--workers", "1")
    assert r.returncode == 1 and "2 blocks were lost" in r.stdout, r.stdout + r.stderr
    r = fsck(m.store, "--scrub", "--workers", "1")
    assert r.returncode == 0, r.stdout

    m.start()
    try:
        assert m.path("a").read_bytes() == a and m.path("a2").read_bytes() == a[:BS]
        assert m.path("b").read_bytes() == bytes(2 * BS) + b[2 * BS:]   # lost blocks: holes
        assert len(os.listdir(m.path("lost+found"))) == 1
    finally:
        m.stop()
    r = fsck(tmp_path / "nowhere")
    assert r.returncode == 8 and "not an llmfs store" in r.stderr
