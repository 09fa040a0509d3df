"""Store learning end to end on a real mount: `python bench/learn.py [--after-mib 3] [DIR ...]`.

For each set -- generated web-server logs, and a C header tree
(``/usr/include/linux``, which the shipped model never saw) unless DIRs are
given -- makes a store, mounts it with the compactor and store learning on
(``learn_after_mib`` lowered from its default 16 so the run takes minutes,
``compact_cpu_share = 1``, two encoding workers), copies the set in, and
waits until the daemon has trained, measured and (if it won) registered a
model by itself -- no ``llmfs train``.  Prints the daemon's own measurement
on its held-back blocks (shipped model vs store model, bits per byte) beside
zstd -19 on the same set, and the time each phase took.  Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfs.training.archive import generated_logs  # noqa: E402


def llmfs(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmfs.cli", *args], capture_output=True,
                          text=True, **kw)


def live(mnt: Path) -> dict:
    return json.loads(os.getxattr(mnt, "user.llmfs.stats"))


def run_set(src: Path, work: Path, after_mib: float, steps: int) -> dict:
    store, mnt = work / "store", work / "mnt"
    shutil.rmtree(work, ignore_errors=True)
    mnt.mkdir(parents=True)
    assert llmfs("mkfs", str(store)).returncode == 0
    opts = (f"compact_after_s=0,compact_interval_s=0.5,compact_cpu_share=1,compact_workers=2,"
            f"learn_after_mib={after_mib},learn_steps={steps}")
    proc = subprocess.Popen([sys.executable, "-m", "llmfs.cli", "mount", "-f", str(store),
                             str(mnt), "-o", opts, "--log", str(work / "daemon.log")])
    try:
        while not os.path.ismount(mnt):
            time.sleep(0.1)
        t0 = time.monotonic()
        shutil.copytree(src, mnt / "set")
        t_learn = None
        while live(mnt).get("learn_runs", 0) < 1:
            if t_learn is None and live(mnt).get("learn_steps", 0) >= 1:
                t_learn = time.monotonic()
            time.sleep(2)
        done = time.monotonic()
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)])
        proc.wait()
    last = json.loads(llmfs("stats", str(store), "--json").stdout)["learn_last"]
    zc = zstandard.ZstdCompressor(level=19)
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    raw = sum(p.stat().st_size for p in files)
    zstd = 8 * sum(len(zc.compress(p.read_bytes()[i:i + 65536]))
                   for p in files for i in range(0, max(1, p.stat().st_size), 65536)) / raw
    return {**last, "set": src.name, "bytes": raw, "zstd": zstd,
            "to_trigger_s": (t_learn or done) - t0, "train_s": done - (t_learn or done)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--after-mib", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llmfs-learn-"))
    if not args.dirs:
        logs = tmp / "logs"
        logs.mkdir()
        for i in range(40):
            (logs / f"app-{i}.log").write_bytes(generated_logs(i, 1000))
        args.dirs = [logs, Path("/usr/include/linux")]
    print(f"learn_after_mib={args.after_mib}, learn_steps={args.steps}, other settings "
          "default; the daemon's measurement on its own held-back blocks\n")
    print("| set | bytes | trained on | shipped model bpb | store model bpb | registered "
          "| zstd -19 bpb (per 64 KiB) | compaction to the trigger s | training + measuring s |")
    print("|---|---:|---|---:|---:|---|---:|---:|---:|")
    for d in args.dirs:
        r = run_set(d, tmp / "work", args.after_mib, args.steps)
        print(f"| {r['set']} | {r['bytes']:,} | {r['trained_on']} | {r['rival_bpb']:.3f} "
              f"| {r['held_bpb']:.3f} | {'yes' if r['registered'] else 'no'} | {r['zstd']:.3f} "
              f"| {r['to_trigger_s']:.0f} | {r['train_s']:.0f} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
