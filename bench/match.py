"""Gain of the match model: `python bench/match.py [FILE...]`.

For the first 64 KiB block of each file (default: every file of
../shared/corpus): bits per byte with the model alone (frame version 2) and
mixed with the match model (version 3, ``llmfs/codec/match.py``; the
segments of a block share their history in lockstep) at the codec's segment
length, at 4096 tokens and with the whole block as one stream (the longest
history, but no batch to decode); then what the encoder keeps (it codes
both ways) and its speed on one thread.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from llmfs.bench import corpus_files, read_sample
from llmfs.codec.llm import LLMCodec
from llmfs.codec.segments import SEGMENT
from llmfs.model.modelfile import LanguageModel

WHOLE = 1 << 30


def main(paths: list[Path]) -> None:
    torch.set_num_threads(1)
    codec = LLMCodec(LanguageModel.load())
    lengths = [SEGMENT, 4096, WHOLE]
    names = [f"{n} tokens" if n != WHOLE else "whole block" for n in lengths]
    print("| file | model alone | " + " | ".join(f"with match, {n}" for n in names)
          + " | encoder keeps | encode KB/s |")
    print("|---|---:|" + "---:|" * len(lengths) + "---|---:|")
    for p in paths:
        block = read_sample(p, 65536)
        base = codec.cost_bits(block, SEGMENT, match=False)
        cells = [f"{base / len(block):.4f}"]
        for n in lengths:
            b = codec.cost_bits(block, n)
            cells.append(f"{b / len(block):.4f} ({100 * (b / base - 1):+.1f} %)")
        t = time.perf_counter()
        enc = codec.encode(block)
        dt = time.perf_counter() - t
        cells.append(f"{'match' if enc.match else 'alone'}, {8 * len(enc.payload) / len(block):.4f}")
        cells.append(f"{len(block) / dt / 1e3:.1f}")
        print(f"| {p.name.removesuffix('.xz')} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or corpus_files())
