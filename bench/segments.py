"""Cost and gain of segmented llm payloads: `python bench/segments.py [FILE...]`.

For the first 64 KiB block of each file (default: dickens, enwik6, xml of
../shared/corpus): bits per byte of the model alone at several segment
lengths (each segment is a stream starting from a fresh model context; with
the match model, which looks across segments, see bench/mixing.py), and the
time one block takes to decode on one thread, unsegmented vs the codec's
segment length.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from llmfs.bench import corpus_files, read_sample
from llmfs.codec import llm
from llmfs.codec.frame import MODEL_ALONE
from llmfs.codec.llm import LLMCodec
from llmfs.codec.segments import SEGMENT
from llmfs.model.modelfile import LanguageModel

UNBOUNDED = 1 << 30


def main(paths: list[Path]) -> None:
    torch.set_num_threads(1)
    model = LanguageModel.load()
    codec = LLMCodec(model)
    lengths = [UNBOUNDED, 4096, 2048, 1024]
    print("| file | " + " | ".join("unbounded" if n == UNBOUNDED else f"{n} tokens"
                                   for n in lengths) + " |")
    print("|---|" + "---:|" * len(lengths))
    for p in paths:
        block = read_sample(p, 65536)
        base = codec.cost_bits(block, UNBOUNDED, MODEL_ALONE)
        cells = []
        for n in lengths:
            b = codec.cost_bits(block, n, MODEL_ALONE)
            cells.append(f"{b / len(block):.4f}" + ("" if n == UNBOUNDED
                                                      else f" (+{100 * (b / base - 1):.2f} %)"))
        print(f"| {p.name.removesuffix('.xz')} | " + " | ".join(cells) + " |", flush=True)
    block = read_sample(paths[0], 65536)
    for n in (UNBOUNDED, SEGMENT):
        llm.SEGMENT = n
        enc = codec.encode(block)
        t = time.perf_counter()
        toks = codec.decode_many([enc])[0]
        assert model.tokenizer.decode(toks) == block
        name = "unsegmented" if n == UNBOUNDED else f"{n}-token segments"
        print(f"one 64 KiB block of {paths[0].name}, {name}: decoded in "
              f"{time.perf_counter() - t:.1f} s on one thread")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    main(args or [p for p in corpus_files() if p.name.split(".")[0] in ("dickens", "enwik6", "xml")])
