"""Codec benchmark: bpb and speed of the llm codec against zstd and xz.

Prints one markdown table.  zstd -19 runs per block (the same blocks llm
sees); xz -9e runs on the whole sample, as the corpus README's baselines do.
"""
from __future__ import annotations

import lzma
import math
import time
from pathlib import Path

import zstandard

from .codec.frame import Codec, Frame
from .codec.llm import LLMCodec
from .codec.workers import LLMPool
from .model.modelfile import LanguageModel

FRAME_OVERHEAD = len(Frame(Codec.LLM, 0, bytes(16), b"", bytes(8), 0).pack())


def corpus_files() -> list[Path]:
    here = Path(__file__).resolve().parent.parent
    for root in (here.parent / "shared" / "corpus", Path.cwd().parent / "shared" / "corpus"):
        if root.is_dir():
            return sorted(root.glob("*.xz"))
    return []


def read_sample(path: Path, limit: int) -> bytes:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rb") as f:
        return f.read(limit) if limit else f.read()


def weight_count(cfg) -> int:
    """Weights of an ALiBi model of *cfg* (embedding/head + attention + MLP; norms left out)."""
    return cfg.vocab * cfg.d_model + cfg.n_layer * (4 * cfg.d_model ** 2
                                                    + 2 * cfg.d_model * cfg.d_ff)


def warm_up(codec: LLMCodec | LLMPool, workers: int) -> None:
    """Start every worker and run the model once, so timings exclude start-up."""
    codec.decode_many(codec.encode_many([(b"warm up " * 20, math.inf)]) * workers)


def measure(data: bytes, codec: LLMCodec | LLMPool, block_size: int) -> dict:
    model = codec.model
    blocks = [data[i:i + block_size] for i in range(0, len(data), block_size)]
    t = time.perf_counter()
    encoded = codec.encode_many([(b, math.inf) for b in blocks])
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    tokens = codec.decode_many(encoded)
    t_dec = time.perf_counter() - t
    if any(model.tokenizer.decode(tk) != b for tk, b in zip(tokens, blocks)):
        raise RuntimeError("llm round trip failed")
    zc = zstandard.ZstdCompressor(level=19)
    llm = [len(e.payload) + FRAME_OVERHEAD for e in encoded]
    zst = [len(zc.compress(b)) + FRAME_OVERHEAD for b in blocks]
    best = [min(a, b, len(raw) + FRAME_OVERHEAD) for a, b, raw in zip(llm, zst, blocks)]
    n = len(data)
    return {
        "bytes": n, "tokens": sum(e.n_tokens for e in encoded),
        "llm": 8 * sum(llm) / n, "best": 8 * sum(best) / n, "zstd": 8 * sum(zst) / n,
        "xz": 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / n,
        "enc": n / t_enc / 1e3, "dec": n / t_dec / 1e3,
    }


def run(paths: list[Path], model: LanguageModel, limit: int, block_size: int,
        workers: int) -> list[dict]:
    kb = block_size // 1024
    print(f"model {model.id.hex()[:16]}  d={model.cfg.d_model} L={model.cfg.n_layer} "
          f"V={model.cfg.vocab} window={model.cfg.window}; blocks {kb} KiB; "
          f"sample {'whole file' if not limit else f'first {limit} bytes'}; "
          f"{workers} single-thread worker process(es)")
    codec = LLMPool(model, workers) if workers > 1 else LLMCodec(model)
    warm_up(codec, workers)
    print(f"| file | bytes | llm bpb | llmfs bpb (best of llm/zstd/raw) | zstd-19 {kb}K bpb "
          f"| xz -9e whole bpb | llm encode KB/s | llm batched decode KB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for p in paths:
        r = measure(read_sample(p, limit), codec, block_size)
        r["file"] = p.name.removesuffix(".xz")
        rows.append(r)
        print(f"| {r['file']} | {r['bytes']} | {r['llm']:.3f} | {r['best']:.3f} | {r['zstd']:.3f} "
              f"| {r['xz']:.3f} | {r['enc']:.1f} | {r['dec']:.1f} |", flush=True)
    if isinstance(codec, LLMPool):
        codec.close()
    return rows
