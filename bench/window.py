"""Cost of the sliding window on long blocks: `python bench/window.py [FILE...]`.

A 64 KiB block is ~20k tokens, far beyond the model's training window.  This
prints the integer engine's bits per byte on one 64 KiB block per file for:
independent windows (context reset every `window` tokens, the cheapest
alternative), the sliding window the codec uses, and wider sliding windows up
to the whole block ("unbounded": every token sees the entire block before it).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

from llmfs.bench import corpus_files, read_sample
from llmfs.model.engine import FREQ_BITS, Engine, KVCache
from llmfs.model.modelfile import DEFAULT_MODEL, LanguageModel


def bits(engine: Engine, ids: torch.Tensor, reset_every: int | None) -> float:
    total, cache = 0.0, KVCache()
    chunk = reset_every or 256  # chunking does not change the tables, only memory
    inp = torch.cat([ids[:1], ids[:-1]])[None]
    for s in range(0, len(ids), chunk):
        if reset_every is not None:
            cache = KVCache()
        f = engine.freqs(engine.step(inp[:, s:s + chunk], cache)[0]).double() + 1
        total += float((FREQ_BITS - torch.log2(f.gather(1, ids[s:s + chunk, None]))).sum())
    return total


def main() -> None:
    lm = LanguageModel.load(DEFAULT_MODEL)
    paths = [Path(p) for p in sys.argv[1:]] or [p for p in corpus_files()
                                               if p.name.startswith(("enwik6", "dickens", "xml"))]
    tensors = __import__("safetensors.torch", fromlist=["load"]).load(DEFAULT_MODEL.read_bytes())
    W = lm.cfg.window
    print(f"| file | independent {W} | sliding {W} (codec) | sliding {4 * W} | sliding {16 * W} "
          f"| unbounded (whole block) |")
    print("|---|---:|---:|---:|---:|---:|")
    for p in paths:
        data = read_sample(p, 1 << 16)
        ids = torch.from_numpy(lm.tokenizer.encode(data))
        row = [bits(lm.engine, ids, W)]
        for w in (W, 4 * W, 16 * W, len(ids)):
            eng = Engine(dataclasses.replace(lm.cfg, window=w), tensors)
            t = time.perf_counter()
            row.append(bits(eng, ids, None))
            print(f"  window {w}: {time.perf_counter() - t:.1f}s", file=sys.stderr)
        print(f"| {p.name.removesuffix('.xz')} | " + " | ".join(f"{b / len(data):.4f}" for b in row)
              + " |", flush=True)


if __name__ == "__main__":
    main()
