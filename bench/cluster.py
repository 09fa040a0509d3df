"""Cluster benchmark: `python bench/cluster.py [--kib 512] [--workers 2]`.

The same cold store (the first ``--kib`` KiB of each text file of
``../shared/corpus``, 64 KiB blocks, written by ``llmfs import``) compacted
twice in one run: by ``llmfs compact --workers N`` on this machine, and by
``llmfs compact --cluster local:N`` (a Ray instance of N CPUs here: the
same code path as a remote cluster, without the network).  Prints the
throughput of each and whether the two stores' frames are byte-identical.
Needs ``pip install 'llmfs[cluster]'``.  Not a test.
"""
from __future__ import annotations

import argparse
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from llmfs.store import Store  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
LLMFS = [sys.executable, "-m", "llmfs.cli"]
TEXT = ("dickens", "enwik6", "reymont", "xml")


def frames(store: Path) -> list[tuple[bytes, bytes]]:
    s = Store(store, readonly=True)
    try:
        return s.read(lambda t: sorted(t.all_frames()))
    finally:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kib", type=int, default=512, help="KiB taken from each file")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dir", type=Path, default=ROOT / "build" / "bench_cluster")
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    tree = args.dir / "tree"
    tree.mkdir(parents=True)
    for name in TEXT:
        with lzma.open(CORPUS / f"{name}.xz") as f:
            (tree / name).write_bytes(f.read(args.kib << 10))
    total = sum(p.stat().st_size for p in tree.iterdir())
    base = args.dir / "store"
    subprocess.run([*LLMFS, "mkfs", str(base)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*LLMFS, "import", str(tree), str(base)], check=True, stdout=subprocess.DEVNULL)
    rows = []
    for label, extra in ((f"llmfs compact --workers {args.workers}", []),
                         (f"llmfs compact --cluster local:{args.workers}",
                          ["--cluster", f"local:{args.workers}"])):
        store = args.dir / f"store-{len(rows)}"
        shutil.copytree(base, store)
        t = time.perf_counter()
        out = subprocess.run([*LLMFS, "compact", str(store), "--workers", str(args.workers),
                              *extra], check=True, capture_output=True, text=True).stdout
        dt = time.perf_counter() - t
        rows.append((label, dt, store, out.strip()))
    same = frames(rows[0][2]) == frames(rows[1][2])
    print(f"\n{len(TEXT)} files x {args.kib} KiB = {total:,} bytes, 64 KiB blocks, "
          f"{args.workers} workers, {os.cpu_count()} cores\n")
    print("| compactor | seconds | KB/s | frames |")
    print("|---|---:|---:|---|")
    for label, dt, _, _ in rows:
        print(f"| {label} | {dt:.1f} | {total / dt / 1e3:.1f} | "
              f"{'byte-identical' if same else 'DIFFERENT'} |")
    for label, _, _, out in rows:
        print(f"\n{label}: {out}")


if __name__ == "__main__":
    main()
