"""The model-size Pareto table: `python bench/pareto.py [--steps 800] [--kib 128]`.

For each shape (width x depth [x vocabulary]) a model is trained from scratch
on the offline training corpus (``python -m llmfs.training.corpus build/corpus2``)
with the same budget of ``--steps`` x ``--batch`` x window tokens, exported to
the integer engine, and measured:

* float and integer bits per byte on held-out corpus text (integer fidelity);
* llm bits per byte through the real codec at 64 KiB blocks on the first
  ``--kib`` KiB of dickens (English), enwik6 (wiki markup) and xml;
* encode and batched decode KB/s of the codec on this CPU
  (``--workers`` single-thread processes), over all three samples.

Models given with ``--model FILE`` (e.g. the shipped default) are measured the
same way without training.  Trained checkpoints are kept under ``--out`` and
reused, so an interrupted run resumes.  Never trains on ``../shared/corpus``:
those files are only measured.  Not a test (tens of minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llmfs.bench import corpus_files, measure, read_sample, warm_up, weight_count  # noqa: E402
from llmfs.codec.workers import LLMPool  # noqa: E402
from llmfs.training.export import export, float_int_bpb
from llmfs.training.floats import load_float  # noqa: E402
from llmfs.model.modelfile import LanguageModel  # noqa: E402
from llmfs.training.net import Config, Transformer  # noqa: E402
from llmfs.model.tokenizer import ByteTokenizer, train as train_tokenizer  # noqa: E402
from llmfs.training.train import save_checkpoint, tokenize_file, train_steps  # noqa: E402

SHAPES = ["64x2", "128x2", "128x4", "192x4", "256x4", "128x4x4096"]
FILES = ("dickens", "enwik6", "xml")


def parse_shape(spec: str) -> tuple[int, int, int]:
    parts = [int(p) for p in spec.split("x")]
    if len(parts) not in (2, 3):
        raise SystemExit(f"shape {spec!r}: expected WIDTHxLAYERS or WIDTHxLAYERSxVOCAB")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else 2048


def tokenizer_for(vocab: int, corpus: Path, out: Path) -> ByteTokenizer:
    path = out / f"tokenizer-{vocab}.json"
    if not path.exists():
        path.write_text(train_tokenizer([corpus / "train.txt"], vocab).to_str())
    return ByteTokenizer.load(path)


def train_shape(spec: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Train (or reuse) one shape; returns its checkpoint directory and training seconds."""
    d, layers, vocab = parse_shape(spec)
    ck = args.out / spec
    done = ck / "config.json"
    if done.exists():
        return ck, json.loads(done.read_text())["train_seconds"]
    ck.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_for(vocab, args.corpus, args.out)
    (ck / "tokenizer.json").write_text(tok.to_str())
    ids_path = args.out / f"train_ids-{vocab}.npy"
    if not ids_path.exists():
        np.save(ids_path, tokenize_file(tok, args.corpus / "train.txt"))
    ids = np.load(ids_path)
    torch.manual_seed(0)
    cfg = Config(vocab=vocab, d_model=d, n_layer=layers, n_head=2 if d < 128 else 4, d_ff=4 * d,
                 window=256)
    model = Transformer(cfg)
    t = time.perf_counter()
    train_steps(model, ids, steps=args.steps, batch=args.batch, lr=args.lr,
                log=lambda m: print(f"  {spec}: {m}", file=sys.stderr, flush=True))
    seconds = time.perf_counter() - t
    save_checkpoint(ck, model, step=args.steps, train_seconds=seconds)
    return ck, seconds


def codec_row(lm: LanguageModel, samples: dict[str, bytes], workers: int) -> dict:
    pool = LLMPool(lm, workers)
    try:
        warm_up(pool, workers)
        res = {name: measure(data, pool, 64 << 10) for name, data in samples.items()}
    finally:
        pool.close()
    n = sum(r["bytes"] for r in res.values())
    return {"bpb": {k: r["llm"] for k, r in res.items()},
            "enc": n / sum(r["bytes"] / r["enc"] for r in res.values()),
            "dec": n / sum(r["bytes"] / r["dec"] for r in res.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", default=SHAPES, help="WIDTHxLAYERS[xVOCAB]")
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="also measure this model file (no training)")
    ap.add_argument("--corpus", type=Path, default=ROOT / "build/corpus2")
    ap.add_argument("--out", type=Path, default=ROOT / "build/pareto")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--kib", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not (args.corpus / "train.txt").exists():
        raise SystemExit(f"{args.corpus}: no training corpus; run "
                         f"python -m llmfs.training.corpus {args.corpus}")
    args.out.mkdir(parents=True, exist_ok=True)
    files = {p.name.removesuffix(".xz"): p for p in corpus_files()}
    if not all(f in files for f in FILES):
        raise SystemExit("../shared/corpus with dickens, enwik6 and xml is needed")
    samples = {f: read_sample(files[f], args.kib << 10) for f in FILES}
    held = (args.corpus / "heldout.txt").read_bytes()
    calib, test = held[:200_000], held[200_000:400_000]
    tokens = args.steps * args.batch * 256
    print(f"trained shapes: {args.steps} steps x {args.batch} x 256 tokens "
          f"({tokens / 1e6:.1f} M tokens) from scratch on {args.corpus.name}; bpb at 64 KiB "
          f"blocks on the first {args.kib} KiB of each file; {args.workers} single-thread "
          f"worker processes\n")
    print("| model | d_model | layers | vocab | parameters | train s | held-out float "
          "| held-out int | dickens | enwik6 | xml | encode KB/s | decode KB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: list[tuple[str, LanguageModel, str, str, str]] = []
    for path in args.model:
        rows.append((path.name, LanguageModel.load(path), "–", "–", "–"))
    for spec in args.shapes:
        ck, seconds = train_shape(spec, args)
        mid = export(ck, ck / "model.safetensors", calib)
        lm = LanguageModel.load(ck / "model.safetensors")
        f_bpb, i_bpb = float_int_bpb(load_float(ck)[0], lm, test)
        rows.append((spec, lm, f"{seconds:.0f}", f"{f_bpb:.3f}", f"{i_bpb:.3f}"))
        print(f"  {spec}: model {mid[:16]}", file=sys.stderr, flush=True)
    for name, lm, seconds, f_bpb, i_bpb in rows:
        c = lm.cfg
        params = weight_count(c)
        r = codec_row(lm, samples, args.workers)
        b = r["bpb"]
        print(f"| {name} | {c.d_model} | {c.n_layer} | {c.vocab} | {params / 1e6:.2f} M "
              f"| {seconds} | {f_bpb} | {i_bpb} | {b['dickens']:.3f} | {b['enwik6']:.3f} "
              f"| {b['xml']:.3f} | {r['enc']:.1f} | {r['dec']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
