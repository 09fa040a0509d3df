"""Train the float model on a token stream (CPU by default, CUDA when present).

``make model`` runs it twice to reproduce the shipped default: from scratch
(the starter), then ``--init`` from that checkpoint on the wider corpus (see
``llmfs/models/default/MODEL.md``).  Checkpoints are float safetensors;
``export.py`` turns one into the integer model.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..model.tokenizer import ByteTokenizer
from ..model.tokenizer import train as train_tokenizer
from .floats import load_float
from .net import Config, Transformer


def tokenize_file(tok: ByteTokenizer, path: Path) -> np.ndarray:
    data = path.read_bytes()
    step = 1 << 16
    parts = tok.encode_batch([data[i:i + step] for i in range(0, len(data), step)])
    return np.concatenate(parts).astype(np.uint16)


@torch.no_grad()
def evaluate(model: Transformer, ids: np.ndarray, seq: int, n_bytes: int) -> float:
    """Bits per byte of *ids* (which decode to *n_bytes* bytes), in windows of *seq*."""
    model.eval()
    total = 0.0
    n = (len(ids) - 1) // seq
    x = torch.from_numpy(ids[: n * seq + 1].astype(np.int64))
    for i in range(0, n, 16):
        rows = range(i, min(n, i + 16))
        inp = torch.stack([x[r * seq:(r + 1) * seq] for r in rows])
        tgt = torch.stack([x[r * seq + 1:(r + 1) * seq + 1] for r in rows])
        total += F.cross_entropy(model(inp).flatten(0, 1), tgt.flatten(), reduction="sum").item()
    model.train()
    return total / math.log(2) / (n_bytes * (n * seq) / len(ids))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    ap.add_argument("--out", type=Path, default=Path("build/train"))
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-ff", type=int, default=512)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", type=Path, metavar="FILE",
                    help="more training text (e.g. synthetic.txt of llmfs.training.synth), "
                         "drawn as --extra-share of every batch")
    ap.add_argument("--extra-share", type=float, default=0.25)
    ap.add_argument("--init", type=Path, metavar="DIR",
                    help="continue training the float checkpoint in DIR (its tokenizer and "
                         "shape; the shape options are ignored)")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    tok_path = args.out / "tokenizer.json"
    init = None
    if args.init:
        init, tok = load_float(args.init)
        tok_path.write_text(tok.to_str())
    elif tok_path.exists():
        tok = ByteTokenizer.load(tok_path)
    else:
        tok = train_tokenizer([args.corpus / "train.txt"], args.vocab)
        tok_path.write_text(tok.to_str())
    ids_path = args.out / "train_ids.npy"
    if not ids_path.exists():
        np.save(ids_path, tokenize_file(tok, args.corpus / "train.txt"))
    ids = np.load(ids_path)
    held_bytes = (args.corpus / "heldout.txt").read_bytes()
    held = tok.encode(held_bytes)
    extra = tokenize_file(tok, args.extra) if args.extra else None
    print(f"train tokens {len(ids):,}  held-out {len(held):,}"
          + (f"  extra {len(extra):,} ({args.extra_share:.0%} of each batch)"
             if extra is not None else ""), flush=True)

    if init is not None:
        model, cfg = init.to(dev), init.cfg
    else:
        cfg = Config(vocab=tok.vocab_size, d_model=args.d_model, n_layer=args.layers,
                     n_head=args.heads, d_ff=args.d_ff, window=args.window)
        model = Transformer(cfg).to(dev)

    def checkpoint(step: int) -> None:
        bpb = evaluate(model, held, cfg.window, len(held_bytes))
        print(f"step {step} held-out bpb {bpb:.4f}", flush=True)
        save_checkpoint(args.out, model, step=step, heldout_bpb=bpb,
                        **({"init": str(args.init)} if args.init else {}),
                        **({"extra": str(args.extra), "extra_share": args.extra_share}
                           if extra is not None else {}))

    train_steps(model, ids, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                log=lambda msg: print(msg, flush=True), every=checkpoint,
                extra=extra, extra_share=args.extra_share)


def save_checkpoint(out: Path, model: Transformer, **info) -> None:
    """A float checkpoint as ``export.load_float`` reads it: float.safetensors
    plus config.json (the model's config and *info*)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "float.safetensors"))
    (out / "config.json").write_text(json.dumps({**model.cfg.to_dict(), **info}, indent=2))


def optimizer(model: Transformer, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": other, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def train_step(model: Transformer, opt: torch.optim.Optimizer, rng: np.random.Generator,
               ids: np.ndarray, step: int, *, steps: int, batch: int, lr: float, warmup: int,
               extra: np.ndarray | None = None, n_extra: int = 0) -> tuple[torch.Tensor, float]:
    """Step *step* of *steps* (cosine decay after *warmup*) on random windows
    of *ids* (*n_extra* rows of each batch from *extra*); (loss, learning rate)."""
    dev = next(model.parameters()).device
    seq = model.cfg.window
    rate = lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
    for g in opt.param_groups:
        g["lr"] = rate
    starts = rng.integers(0, len(ids) - seq - 1, batch - n_extra)
    rows = [ids[s:s + seq + 1] for s in starts]
    if n_extra:
        rows += [extra[s:s + seq + 1] for s in rng.integers(0, len(extra) - seq - 1, n_extra)]
    x = torch.from_numpy(np.stack(rows).astype(np.int64)).to(dev)
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss, rate


def check_enough(model: Transformer, *streams: np.ndarray) -> None:
    for stream in streams:
        if len(stream) <= model.cfg.window + 1:
            raise ValueError(f"{len(stream)} tokens: too little text to train on "
                             f"(need > {model.cfg.window + 1})")


def train_steps(model: Transformer, ids: np.ndarray, *, steps: int, batch: int, lr: float,
                seed: int = 0, warmup: int = 200, log: Callable[[str], None] | None = None,
                every: Callable[[int], None] | None = None,
                progress: Callable[[int], None] | None = None,
                extra: np.ndarray | None = None, extra_share: float = 0.0) -> float:
    """AdamW with cosine decay on random windows of *ids* (and, for
    *extra_share* of each batch, of *extra*); returns the last loss.
    *every* is called each 1000 steps and at the end (checkpoints), *progress*
    after each step."""
    opt = optimizer(model, lr)
    seq = model.cfg.window
    if not 0.0 <= extra_share <= 1.0:
        raise ValueError(f"extra share {extra_share}: not between 0 and 1")
    n_extra = round(batch * extra_share) if extra is not None else 0
    check_enough(model, *((ids, extra) if n_extra else (ids,)))
    rng = np.random.default_rng(seed)
    model.train()
    t0 = time.time()
    loss = torch.tensor(float("nan"))
    for step in range(1, steps + 1):
        loss, rate = train_step(model, opt, rng, ids, step, steps=steps, batch=batch, lr=lr,
                                warmup=warmup, extra=extra, n_extra=n_extra)
        if log and (step % 100 == 0 or step == steps):
            el = time.time() - t0
            log(f"step {step} loss {loss.item():.3f} lr {rate:.2e} "
                f"{step * batch * seq / el:,.0f} tok/s {el:.0f}s")
        if every and (step % 1000 == 0 or step == steps):
            every(step)
        if progress:
            progress(1)
    model.eval()
    return float(loss.item())

if __name__ == "__main__":
    main()
