"""Filesystem benchmark: `python bench/fs.py [--mib 256] [--dir build/bench_fs]`.

Prints one markdown table: the llmfs mount against a plain directory on the
same disk — sequential write (with fsync) and read MB/s, re-read from cache,
random 4 KiB read latency for zstd, llm and ZPAQ blocks (the ZPAQ file:
binary records the compactor gives to ZPAQ), first-byte latency of a cold
llm block, and the daemon's RSS.  Not a test.

Data: 4 KiB pieces of the bundled text samples in random order (compressible
like source trees and documents; no benchmark corpus is needed).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfs.codec.frame import Codec, Frame  # noqa: E402
from llmfs.codec.policy import BlockCodec  # noqa: E402
from llmfs.compactor import recompress  # noqa: E402
from llmfs.model.modelfile import LanguageModel  # noqa: E402
from llmfs.store import Store  # noqa: E402

LLMFS = [sys.executable, "-m", "llmfs.cli"]
CHUNK = 1 << 20


def sample_data(size: int, seed: int = 1) -> bytes:
    texts = [p.read_bytes() for p in (ROOT / "llmfs" / "samples").glob("*")
             if p.suffix in (".txt", ".go")]
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        t = rng.choice(texts)
        i = rng.randrange(len(t) - 4096)
        out += t[i:i + 4096]
    return bytes(out[:size])


def records(size: int, seed: int = 4) -> bytes:
    """Binary records (an id, a small count, a delta, a float): what ZPAQ wins."""
    rng = random.Random(seed)
    out = b"".join(struct.pack("<IHhf", i * 7, rng.randrange(50), rng.randrange(-5, 5), i / 2)
                   for i in range(size // 12 + 1))
    return out[:size]


def mount(store: Path, mnt: Path, *opts: str) -> None:
    subprocess.run([*LLMFS, "mount", str(store), str(mnt), *opts], check=True)


def umount(mnt: Path) -> None:
    subprocess.run([*LLMFS, "umount", str(mnt)], check=True)


def daemon_rss_mib(mnt: Path) -> float:
    """RSS of the daemon and its model worker processes."""
    from llmfs.cli.fs import _daemon_pid

    pid = _daemon_pid(str(mnt))
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], text=True,
                                                     capture_output=True).stdout.split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def drop_caches() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def seq_write(path: Path, data: bytes) -> float:
    t = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for i in range(0, len(data), CHUNK):
            f.write(data[i:i + CHUNK])
        os.fsync(f.fileno())
    return len(data) / (time.perf_counter() - t) / 1e6


def seq_read(path: Path) -> float:
    t = time.perf_counter()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            n += len(chunk)
    return n / (time.perf_counter() - t) / 1e6


def random_reads(path: Path, count: int, seed: int = 2) -> tuple[float, float]:
    """p50 and p99 of 4 KiB pread latency in ms (O_DIRECT-free: FUSE direct reads
    are not cached by the kernel once attributes time out; the plain dir may be)."""
    size = path.stat().st_size
    rng = random.Random(seed)
    lat = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(count):
            off = rng.randrange(0, size - 4096) & ~4095
            t = time.perf_counter()
            os.pread(fd, 4096, off)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
    lat.sort()
    return statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the sequential file")
    ap.add_argument("--llm-kib", type=int, default=256, help="size of the llm-encoded file")
    ap.add_argument("--dir", default=str(ROOT / "build" / "bench_fs"))
    args = ap.parse_args()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    store, mnt, plain = base / "store", base / "mnt", base / "plain"
    mnt.mkdir(parents=True)
    plain.mkdir()
    data = sample_data(args.mib << 20)
    llm_data = sample_data(args.llm_kib << 10, seed=3)
    subprocess.run([*LLMFS, "mkfs", str(store)], check=True, capture_output=True)

    rows: dict[str, list[str]] = {}
    # plain directory
    w = seq_write(plain / "seq", data)
    dropped = drop_caches()
    r = seq_read(plain / "seq")
    rr = seq_read(plain / "seq")
    p50, p99 = random_reads(plain / "seq", 2000)
    rows["plain directory"] = [f"{w:.0f}", f"{r:.0f}", f"{rr:.0f}", f"{p50:.3f} / {p99:.3f}",
                               "–", "–", "–", "–"]

    # llmfs: zstd tier
    mount(store, mnt)
    w = seq_write(mnt / "seq", data)
    (mnt / "llm").write_bytes(llm_data)
    (mnt / "zpaq").write_bytes(records(args.llm_kib << 10))
    umount(mnt)
    s = Store(store)     # re-encode the small file's blocks with the model (compactor core)
    keys = s.read(lambda t: list(t.block_keys(t.lookup(1, b"llm"), 0, 1 << 20).values()))
    with BlockCodec(LanguageModel.load(), workers=os.cpu_count() or 1) as codec:
        t = time.perf_counter()
        stats = recompress(s, codec, keys)
        enc = len(llm_data) / (time.perf_counter() - t) / 1e3
    zkeys = s.read(lambda t: list(t.block_keys(t.lookup(1, b"zpaq"), 0, 1 << 20).values()))
    with BlockCodec(None) as plain:
        recompress(s, plain, zkeys)
    zpaq = s.read(lambda t: sum(Frame.unpack(t.frame(k)).codec == Codec.ZPAQ for k in zkeys))
    s.close()
    mount(store, mnt)
    drop_caches()
    r = seq_read(mnt / "seq")
    rr = seq_read(mnt / "seq")
    umount(mnt)
    mount(store, mnt)
    zp50, zp99 = random_reads(mnt / "seq", 2000)
    t = time.perf_counter()
    with open(mnt / "llm", "rb", buffering=0) as f:
        f.read(1)
    first = time.perf_counter() - t
    lp50, lp99 = random_reads(mnt / "llm", 200)
    umount(mnt)
    mount(store, mnt)      # cold again: ZPAQ blocks decoded on the first read of each
    qp50, qp99 = random_reads(mnt / "zpaq", 200)
    rss = daemon_rss_mib(mnt)
    umount(mnt)
    rows["llmfs mount"] = [f"{w:.0f}", f"{r:.0f}", f"{rr:.0f}", f"{zp50:.3f} / {zp99:.3f}",
                           f"{lp50:.1f} / {lp99:.1f}", f"{qp50:.1f} / {qp99:.1f}",
                           f"{first:.2f}", f"{rss:.0f}"]

    print(f"{args.mib} MiB sequential file, 1 MiB I/O; llm file {args.llm_kib} KiB "
          f"({stats['llm']} of {len(keys)} blocks llm, re-encoded at {enc:.1f} KB/s); "
          f"ZPAQ file {args.llm_kib} KiB ({zpaq} of {len(zkeys)} blocks ZPAQ); "
          f"page cache {'dropped' if dropped else 'NOT dropped'} before cold reads; "
          f"{os.cpu_count()} cores")
    print("| | seq write MB/s (fsync) | seq read MB/s (cold) | re-read MB/s (cached) "
          "| 4 KiB random read ms p50 / p99 (zstd) | 4 KiB random read ms p50 / p99 (llm) "
          "| 4 KiB random read ms p50 / p99 (ZPAQ) | cold llm first byte s | daemon RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| target (issue 3) | ≥ 150 | | ≥ 300 | | | | ≤ 0.5 | |")


if __name__ == "__main__":
    main()
