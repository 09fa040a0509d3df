"""import / export round trip of a tree with every file type, without FUSE,
and the imported tree seen through a mount."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from conftest import Mounted

SAMPLE = (Path(__file__).resolve().parent.parent / "llmfs" / "samples" / "GPL-3.txt").read_bytes()


def make_tree(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "text.txt").write_bytes(SAMPLE)
    (root / "dir" / "random.bin").write_bytes(os.urandom(200_000))
    (root / "empty").write_bytes(b"")
    with open(root / "dir" / "sparse", "wb") as f:
        f.seek(3 << 20)
        f.write(b"tail")
    os.link(root / "text.txt", root / "dir" / "sub" / "hardlink")
    os.symlink("../text.txt", root / "dir" / "link")
    os.symlink("dangling/target", root / "broken")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "text.txt", "user.origin", b"gnu.org")
    os.setxattr(root / "dir", "user.kind", b"folder")
    os.chmod(root / "dir" / "random.bin", 0o4751)
    os.chmod(root / "dir" / "sub", 0o700)
    os.chown(root / "empty", 4321, 1234)
    os.utime(root / "text.txt", ns=(1_111_111_111_222_333_444, 1_222_333_444_555_666_777))
    os.utime(root / "dir" / "sub", ns=(1_000_000_000_000_000_001, 1_000_000_000_000_000_002))


def describe(root: Path) -> dict:
    out, inos = {}, {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            link_group = inos.setdefault(st.st_ino, rel)
            info = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_mtime_ns, link_group, sorted((n, os.getxattr(p, n)) for n in
                                                       os.listxattr(p, follow_symlinks=False))
                    if not stat.S_ISLNK(st.st_mode) else []]
            if stat.S_ISREG(st.st_mode):
                info += [st.st_size, p.read_bytes(), st.st_nlink]
            elif stat.S_ISLNK(st.st_mode):
                info.append(os.readlink(p))
            out[rel] = info
    return out


def llmfs(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmfs.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_import_export_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    m = Mounted(tmp_path)
    m.mkfs()
    r = llmfs("import", src, m.store)
    assert r.returncode == 0 and "imported 10 entries" in r.stdout, r.stdout + r.stderr
    r = llmfs("import", src, m.store)                      # names exist: a clear error
    assert r.returncode == 1 and "already in the store" in r.stderr

    m.start()
    try:
        assert describe(m.mnt) == describe(src)
        assert os.stat(m.path("dir", "sparse")).st_blocks * 512 <= 2 * 65536
    finally:
        m.stop()

    r = llmfs("compact", m.store, "--workers", "1", "--limit", "2")   # some llm blocks too
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = llmfs("export", m.store, out, "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert describe(out) == describe(src)
    r = llmfs("export", m.store, out)
    assert r.returncode == 1 and "not empty" in r.stderr
