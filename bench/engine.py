"""Integer engine speed on one process: `python bench/engine.py [--threads N] [FILE...]`.

For the first 64 KiB of each file (default: dickens, enwik6, xml of
../shared/corpus), with the default model: encode KB/s (chunked forward +
range coder) and decode KB/s of that one block (its segments as one batch),
with the native C core (``llmfs/model/_core.c``, its fastest SIMD path on
one thread and on every core, and the portable one), and with the torch
engine (``--threads``: its threads): int8 matmuls as integer
matmuls (where the engine's probe allows) and the exact float32 path.  Every
path must give the same payload; the script checks it.  Not a test.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load

from llmfs.bench import corpus_files, read_sample
from llmfs.codec.llm import LLMCodec
from llmfs.model.engine import Engine, int8_mm_exact
from llmfs.model import native
from llmfs.model.modelfile import LanguageModel

BLOCK = 65536


def measure(codec: LLMCodec, data: bytes) -> tuple[bytes, float, float]:
    """(payload, encode KB/s, decode KB/s) of *data*; decoding is checked."""
    t = time.perf_counter()
    enc = codec.encode(data)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    ids = codec.decode_many([enc])[0]
    t_dec = time.perf_counter() - t
    if codec.model.tokenizer.decode(ids) != data:
        raise SystemExit("decode mismatch")
    return enc.payload, len(data) / t_enc / 1e3, len(data) / t_dec / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = LanguageModel.load()
    fast = native.simd()
    cores = len(os.sched_getaffinity(0))
    paths = [(f"native core ({fast})", model, "native", fast, 1)]
    if cores > 1:
        paths.append((f"native core ({fast}), {cores} threads", model, "native", fast, cores))
    if fast != "portable":
        paths.append(("native core (portable)", model, "native", "portable", 1))
    if int8_mm_exact():
        paths.append(("torch, int8 matmul", model, "torch", None, 1))
    f32 = LanguageModel.from_bytes(model.data)
    f32.engine = Engine(model.cfg, load(model.data), int8=False)
    paths.append(("torch, float32 matmul", f32, "torch", None, 1))
    print(f"model {model.id.hex()[:16]}; first {BLOCK} bytes; torch on {args.threads} "
          f"thread(s); torch._int_mm exact here: {int8_mm_exact()}")
    print("| file | engine path | encode KB/s | decode KB/s (one block) |")
    print("|---|---|---:|---:|")
    for path in args.files or [p for p in corpus_files()
                               if p.name.split(".")[0] in ("dickens", "enwik6", "xml")]:
        data = read_sample(path, BLOCK)
        payloads = set()
        for name, lm, engine, simd, threads in paths:
            os.environ["LLMFS_ENGINE"] = engine
            if simd:
                native.simd(simd)
            native.threads(threads)
            codec = LLMCodec(lm)
            codec.encode(data[:4096])   # warm-up
            payload, enc, dec = measure(codec, data)
            payloads.add(payload)
            print(f"| {path.name.split('.')[0]} | {name} | {enc:.1f} | {dec:.1f} |", flush=True)
        if len(payloads) != 1:
            raise SystemExit("the engine paths gave different payloads")


if __name__ == "__main__":
    main()
