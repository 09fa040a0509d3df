"""Codec speed per model shape: `python bench/shapes.py [--kib 128] [--workers 2]`.

The speed half of the model-size Pareto table (issue 5): for each width and
depth, an untrained model of that shape (random weights, the shipped
tokenizer, scales calibrated on random tokens) goes through the real llm
codec on the first ``--kib`` KiB of dickens in 64 KiB blocks, on
``--workers`` single-thread processes.  The engine's cost does not depend on
the weights, so these are the speeds a trained model of the shape will have;
the bits per byte need training and are not printed.  Not a test.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfs.bench import corpus_files, measure, read_sample, warm_up, weight_count  # noqa: E402
from llmfs.codec.workers import LLMPool  # noqa: E402
from llmfs.training.export import quantize  # noqa: E402
from llmfs.model.modelfile import LanguageModel, model_bytes  # noqa: E402
from llmfs.training.net import Config, Transformer  # noqa: E402

SHAPES = [(64, 2), (64, 4), (128, 2), (128, 4), (128, 8), (192, 4), (256, 4), (256, 8),
          (384, 6)]


def shape_model(d: int, layers: int, base: LanguageModel) -> LanguageModel:
    torch.manual_seed(0)
    cfg = Config(vocab=base.cfg.vocab, d_model=d, n_layer=layers, n_head=4, d_ff=4 * d,
                 window=base.cfg.window)
    net = Transformer(cfg).eval()
    calib = torch.randint(0, cfg.vocab, (8, cfg.window))
    with torch.no_grad():
        tensors = quantize(net, calib)
    return LanguageModel.from_bytes(model_bytes(cfg, base.tokenizer, tensors, {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kib", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    dickens = next(p for p in corpus_files() if p.name.startswith("dickens"))
    data = read_sample(dickens, args.kib << 10)
    base = LanguageModel.load()
    print(f"first {args.kib} KiB of dickens in 64 KiB blocks, vocabulary {base.cfg.vocab}, "
          f"window {base.cfg.window}, {args.workers} single-thread worker processes\n")
    print("| d_model | layers | parameters | encode KB/s | batched decode KB/s |")
    print("|---:|---:|---:|---:|---:|")
    for d, layers in SHAPES:
        lm = shape_model(d, layers, base)
        params = weight_count(lm.cfg)
        pool = LLMPool(lm, args.workers)
        try:
            warm_up(pool, args.workers)
            r = measure(data, pool, 64 << 10)    # round-trips every block, or raises
        finally:
            pool.close()
        print(f"| {d} | {layers} | {params / 1e6:.2f} M | {r['enc']:.1f} | {r['dec']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
