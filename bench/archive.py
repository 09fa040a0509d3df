"""Archive benchmark: `python bench/archive.py [--per-file 256K] [--dir build/bench_archive]`.

Builds one archive tree — the ``../shared/corpus`` files, a C header tree
(``/usr/include``, not in the model's training data) and some ELF binaries —
and stores it four ways in the same run: llmfs after compaction (``llmfs
import`` then ``llmfs compact``), ``mksquashfs -comp xz -b 1M``, ``tar | xz -9e``
and ``tar | zstd -19``.  Prints one markdown table: stored bytes, ratio and
the time each took (for llmfs: the compaction throughput).  Not a test.

The model encodes at tens of KB/s on two cores, so by default each corpus
file contributes only its first ``--per-file`` bytes (``--per-file 0``: whole
files; that takes hours).  All four archivers see the same tree.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
LLMFS = [sys.executable, "-m", "llmfs.cli"]
BINARIES = ("/usr/bin/xz", "/usr/bin/zstd", "/usr/bin/tar", "/usr/bin/find")


def size_arg(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def build_tree(tree: Path, per_file: int, src_bytes: int) -> int:
    """The archive tree; returns its size in bytes."""
    (tree / "corpus").mkdir(parents=True)
    for xz in sorted(CORPUS.glob("*.xz")):
        with lzma.open(xz) as f:
            data = f.read(per_file) if per_file else f.read()
        (tree / "corpus" / xz.stem).write_bytes(data)
    taken = 0
    for path in sorted(Path("/usr/include/linux").rglob("*.h")):
        if taken >= src_bytes:
            break
        if path.is_file() and not path.is_symlink():
            dest = tree / "src" / path.relative_to("/usr/include")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            taken += path.stat().st_size
    (tree / "bin").mkdir()
    for b in BINARIES:
        if Path(b).is_file():
            shutil.copyfile(b, tree / "bin" / Path(b).name)
    return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())


def timed(cmd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def llmfs_store(tree: Path, work: Path, block_size: int) -> dict:
    """Import, compact, fsck; sizes of the frames and of a compacted copy of the LMDB file."""
    import lmdb

    store = work / "store"
    subprocess.run([*LLMFS, "mkfs", str(store), "--block-size", str(block_size)], check=True,
                   stdout=subprocess.DEVNULL)
    t = time.perf_counter()
    subprocess.run([*LLMFS, "import", str(tree), str(store)], check=True,
                   stdout=subprocess.DEVNULL)
    t_import = time.perf_counter() - t
    t = time.perf_counter()
    out = subprocess.run([*LLMFS, "compact", str(store)], check=True, capture_output=True,
                         text=True).stdout.strip()
    t_compact = time.perf_counter() - t
    subprocess.run([*LLMFS, "fsck", str(store), "--scrub"], check=True,
                   stdout=subprocess.DEVNULL)
    copy = work / "store-copy"
    copy.mkdir()
    env = lmdb.open(str(store), readonly=True, lock=False, max_dbs=32)
    env.copy(str(copy), compact=True)
    env.close()
    st = json.loads(subprocess.run([*LLMFS, "stats", str(copy), "--json"], check=True,
                                   capture_output=True, text=True).stdout)
    return {"frames": st["stored_bytes"], "lmdb": (copy / "data.mdb").stat().st_size,
            "models": st["space"]["models"], "space": st["space"], "packs": st["packs"],
            "packed": st["packed_frames"],
            "import_s": t_import, "compact_s": t_compact, "summary": out,
            "codecs": st["codecs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-file", type=size_arg, default=256 << 10,
                    help="bytes taken from the start of each corpus file (0: all)")
    ap.add_argument("--src-bytes", type=size_arg, default=1 << 20,
                    help="bytes of C headers from /usr/include/linux")
    ap.add_argument("--block-size", type=size_arg, default=64 << 10,
                    help="the llmfs store's block size")
    ap.add_argument("--dir", type=Path, default=ROOT / "build" / "bench_archive")
    args = ap.parse_args()
    if not shutil.which("mksquashfs"):
        sys.exit("mksquashfs not found: apt-get install squashfs-tools")
    shutil.rmtree(args.dir, ignore_errors=True)
    tree = args.dir / "tree"
    total = build_tree(tree, args.per_file, args.src_bytes)
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    rows: list[tuple[str, int, float | None, str]] = []
    sq = args.dir / "tree.sqsh"
    dt = timed(f"mksquashfs {tree} {sq} -comp xz -b 1M -noappend -no-progress -quiet")
    rows.append(("mksquashfs -comp xz -b 1M", sq.stat().st_size, dt, ""))
    for name, cmd, ext in (("tar \\| xz -9e", "xz -9e -T1", "xz"),
                           ("tar \\| zstd -19", "zstd -19 -q -T1", "zst")):
        out = args.dir / f"tree.tar.{ext}"
        dt = timed(f"tar -C {tree} -cf - . | {cmd} > {out}")
        rows.append((name, out.stat().st_size, dt, ""))
    r = llmfs_store(tree, args.dir, args.block_size)
    rows.append(("llmfs frames (blocks only)", r["frames"], r["compact_s"],
                 f"compaction {total / r['compact_s'] / 1e3:.1f} KB/s"))
    rows.append(("llmfs store (LMDB, compacted copy)", r["lmdb"], r["import_s"] + r["compact_s"],
                 f"import {r['import_s']:.1f} s + compact {r['compact_s']:.0f} s; "
                 f"includes the model, {r['models']:,} bytes"))
    rows.append(("llmfs store without the model", r["lmdb"] - r["models"], None,
                 "what grows with the data: frames, LMDB pages, metadata"))
    squash = rows[0][1]
    print(f"\ntree: {files} files, {total:,} bytes (corpus files: first "
          f"{args.per_file or 'all'} bytes each; {args.src_bytes:,} bytes of C headers; "
          f"{len(BINARIES)} ELF binaries); {args.block_size >> 10} KiB blocks; "
          f"{os.cpu_count()} cores\n")
    print("| archiver | stored bytes | ratio | vs squashfs-xz | time s | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, size, dt, note in rows:
        took = "" if dt is None else f"{dt:.1f}"
        print(f"| {name} | {size:,} | {total / size:.3f} | {size / squash:.3f} | {took} | {note} |")
    print("\nllmfs blocks by codec:")
    for codec, c in sorted(r["codecs"].items()):
        print(f"  {codec}: {c['blocks']} blocks, {c['logical']:,} -> {c['stored']:,} bytes")
    print(f"  {r['summary']}")
    sp = r["space"]
    print(f"\nwhere the store's bytes go (`llmfs stats`, compacted copy; {r['packed']} of "
          f"{sum(c['blocks'] for c in r['codecs'].values())} frames in {r['packs']} packs):\n")
    print("| part | bytes | vs frames |")
    print("|---|---:|---:|")
    for part in ("frames", "pack_slack", "page_slack", "metadata", "models", "dictionaries",
                 "free", "file"):
        print(f"| {part.replace('_', ' ')} | {sp[part]:,} | {sp[part] / sp['frames']:.3f} |")


if __name__ == "__main__":
    main()
