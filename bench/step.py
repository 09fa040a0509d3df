"""Native core step cost: `python bench/step.py [MODEL...]`.

For each model file (default: the shipped default and, when built,
build/strong/model.safetensors), the median wall time of one
``NativeEngine.step`` on one thread, and on every core (the core's helper
threads split the streams), for: one stream one position (a cold
single-stream decode step: every weight read for one row), 8 and 14 streams
one position (a block's segments decoding in lockstep), one stream 170
positions (an encoder chunk of the strong tier's size) and 14 streams 16
positions (part of an encoder chunk of a 64 KiB block).  Random tokens,
positions from the start of the cache.  Not a test.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from llmfs.model import MODELS_DIR, native  # noqa: E402
from llmfs.model.modelfile import LanguageModel  # noqa: E402

SHAPES = [(1, 1), (8, 1), (14, 1), (1, 170), (14, 16)]   # (streams, positions) per step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", type=Path)
    args = ap.parse_args()
    models = args.models or [MODELS_DIR / "default" / "model.safetensors",
                             Path("build/strong/model.safetensors")]
    cores = len(os.sched_getaffinity(0))
    print(f"SIMD path: {native.simd()}; {cores} cores")
    print(f"| model | streams x positions | ms / step | ms / row | ms / step, {cores} threads |")
    print("|---|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for path in models:
        if not path.exists():
            print(f"| {path} | (not built) | | |")
            continue
        lm = LanguageModel.load(path)
        eng = native.NativeEngine.of(lm)
        for B, n in SHAPES:
            ms = [step_ms(eng, rng, lm.cfg.vocab, B, n, threads) for threads in (1, cores)]
            print(f"| {path.parent.name} | {B} x {n} | {ms[0]:.2f} | {ms[0] / B / n:.3f} "
                  f"| {ms[1]:.2f} |")
    native.threads(1)


def step_ms(eng, rng, vocab: int, B: int, n: int, threads: int) -> float:
    """Median ms of one step of B streams x n positions on *threads* threads."""
    native.threads(threads)
    cache, times = eng.new_cache(), []
    for _ in range(8 if n == 1 else 3):
        toks = rng.integers(0, vocab, (B, n))
        t = time.perf_counter()
        eng.step(toks, cache)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


if __name__ == "__main__":
    main()
