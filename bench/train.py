"""`llmfs train` benchmark: `python bench/train.py [--steps 300] [--sample 4M] [DIR ...]`.

For each homogeneous set — generated web-server logs, and a C header tree
(``/usr/include/linux``, which the shipped model never saw) unless DIRs are
given — fine-tunes the shipped model on a sample, then codes the held-back
blocks with the shipped model, the trained one, zstd -19 (per block) and
xz -9e (all held-back blocks as one stream).  Prints one markdown table in
bits per byte.  Not a test.
"""
from __future__ import annotations

import argparse
import lzma
import sys
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfs.model import DEFAULT_MODEL  # noqa: E402
from llmfs.training.archive import generated_logs, sample_directory, split, train_model  # noqa: E402


def write_logs(dest: Path, files: int = 8, lines: int = 6000) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (dest / f"app-{i}.log").write_bytes(generated_logs(i, lines))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sample", type=int, default=4 << 20)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_train")
    args = ap.parse_args()
    dirs = args.dirs or [write_logs(args.work / "logs"), Path("/usr/include/linux")]
    print(f"{args.steps} steps of 16 x 256 tokens from the shipped model; sample up to "
          f"{args.sample:,} bytes in 64 KiB blocks, every 10th block held back (<= 128 KiB)\n")
    print("| set | trained on | held back | shipped model bpb | trained bpb | zstd -19 bpb "
          "| xz -9e bpb | train + measure s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    zc = zstandard.ZstdCompressor(level=19)
    for d in dirs:
        blocks = sample_directory(d, args.sample, 64 << 10)
        _, held = split(blocks, 0.1, 128 << 10)
        t = time.perf_counter()
        res = train_model(DEFAULT_MODEL, blocks, steps=args.steps)
        dt = time.perf_counter() - t
        n = sum(map(len, held))
        zstd = 8 * sum(len(zc.compress(b)) for b in held) / n
        xz = 8 * len(lzma.compress(b"".join(held), preset=9 | lzma.PRESET_EXTREME)) / n
        print(f"| {d.name} | {res.train_bytes:,} | {res.held_bytes:,} | {res.base_bpb:.3f} "
              f"| {res.new_bpb:.3f} | {zstd:.3f} | {xz:.3f} | {dt:.0f} |", flush=True)


if __name__ == "__main__":
    main()
