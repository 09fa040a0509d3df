"""Gain of mixing the model with the block's own history: `python bench/mixing.py [FILE...]`.

For the first 64 KiB block of each file (default: every file of
../shared/corpus), bits per byte as each frame version codes it: the model
alone (version 2), mixed with the match model (3, ``llmfs/codec/match.py``)
and with the n-gram caches too (4, ``llmfs/codec/ngram.py``), at the codec's
segment length (the segments of a block share their history in lockstep),
and version 4 with the whole block as one stream (the longest history, but
no batch to decode); then what the encoder keeps (it codes both ways) and
its encode and decode speed on one thread.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from llmfs.bench import corpus_files, read_sample
from llmfs.codec.frame import MATCH, MODEL_ALONE, NGRAMS
from llmfs.codec.llm import LLMCodec
from llmfs.codec.segments import SEGMENT
from llmfs.model.modelfile import LanguageModel

WHOLE = 1 << 30
NAMES = {MODEL_ALONE: "alone", MATCH: "match", NGRAMS: "match + n-grams"}


def main(paths: list[Path]) -> None:
    torch.set_num_threads(1)
    codec = LLMCodec(LanguageModel.load())
    runs = [(MODEL_ALONE, SEGMENT), (MATCH, SEGMENT), (NGRAMS, SEGMENT), (NGRAMS, WHOLE)]
    print("| file | model alone (v2) | match (v3) | match + n-grams (v4) "
          "| v4, whole block one stream | encoder keeps | encode KB/s | decode KB/s |")
    print("|---|" + "---:|" * len(runs) + "---|---:|---:|")
    for p in paths:
        block = read_sample(p, 65536)
        cells, base = [], None
        for version, segment in runs:
            b = codec.cost_bits(block, segment, version)
            base = base or b
            cells.append(f"{b / len(block):.4f}" + (f" ({100 * (b / base - 1):+.1f} %)"
                                                      if b != base else ""))
        t = time.perf_counter()
        enc = codec.encode(block)
        dt = time.perf_counter() - t
        cells.append(f"{NAMES[enc.version]}, {8 * len(enc.payload) / len(block):.4f}")
        t = time.perf_counter()
        toks = codec.decode_many([enc])[0]
        dd = time.perf_counter() - t
        assert codec.model.tokenizer.decode(toks) == block
        cells += [f"{len(block) / dt / 1e3:.1f}", f"{len(block) / dd / 1e3:.1f}"]
        print(f"| {p.name.removesuffix('.xz')} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or corpus_files())
