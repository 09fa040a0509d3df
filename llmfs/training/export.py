"""Float checkpoint -> integer model file (post-training quantisation).

Static scales are calibrated once on sample text and written into the model
file: recalibrating per process would change the integers and so the
frequency tables.  Every scale below becomes an integer multiplier or an
integer table; ``engine.py`` documents the formats.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..model.intformat import FX, NORM_CB, SHIFT, ZA, ZV
from ..model.modelfile import save_model
from ..model.tokenizer import ByteTokenizer
from .floats import FLOAT_NAME, load_float, save_float
from .net import Transformer

if TYPE_CHECKING:
    from ..model.modelfile import LanguageModel

GELU_N = 256  # GELU table covers [-R, R] of each channel in 2N+1 steps


def _mult(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.double() * (1 << SHIFT)).to(torch.int64)


def _quant_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: w ~ q * scale[:, None]."""
    scale = w.abs().amax(1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.double()


@torch.no_grad()
def record_maxima(model: nn.Module, batch: torch.Tensor,
                  points: list[tuple[str, nn.Module, bool]]) -> dict[str, torch.Tensor]:
    """Max |activation| per channel at each point (name, module, input?): the
    module's output, or its input where the flag is set, in one forward pass."""
    stats: dict[str, torch.Tensor] = {}

    def keep(name: str, t: torch.Tensor) -> None:
        m = t.detach().abs().flatten(0, -2).amax(0)
        stats[name] = torch.maximum(stats[name], m) if name in stats else m

    hooks = [mod.register_forward_pre_hook(lambda m, a, n=name: keep(n, a[0])) if on_input
             else mod.register_forward_hook(lambda m, a, out, n=name: keep(n, out))
             for name, mod, on_input in points]
    try:
        model(batch)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.clamp(min=1e-6).double() for k, v in stats.items()}


def calibrate(model: Transformer, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Max |activation| per channel at every quantisation point."""
    points = [(f"{i}.{name}", mod, False) for i, blk in enumerate(model.blocks)
              for mod, name in ((blk.norm1, "n1"), (blk.norm2, "n2"), (blk.wq, "q"),
                                (blk.wk, "k"), (blk.wv, "v"), (blk.w1, "u"))]
    return record_maxima(model, batch, points + [("nf", model.norm_f, False)])


def quantize(model: Transformer, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """Integer tensors for ``Engine`` from a float model and calibration tokens."""
    cfg = model.cfg
    st = calibrate(model, calib)
    H, hd = cfg.n_head, cfg.head_dim
    sd = {k: v.double() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    emb = sd["emb.weight"]
    out["emb"] = torch.round(emb * (1 << FX)).to(torch.int32)
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        s1 = st[f"{i}.n1"] / 127
        out[f"layers.{i}.norm1"] = torch.round(sd[p + "norm1.weight"] / s1 * (1 << NORM_CB)).long()
        wqkv = torch.cat([sd[p + "wq.weight"], sd[p + "wk.weight"], sd[p + "wv.weight"]]) * s1
        q8, sw = _quant_rows(wqkv)
        per_head = lambda m: m.view(H, hd).amax(1).repeat_interleave(hd) / 127  # noqa: E731
        sq, sk, sv = per_head(st[f"{i}.q"]), per_head(st[f"{i}.k"]), st[f"{i}.v"] / 127
        sq_h, shift = attention_scales(sq[::hd], sk[::hd], hd)
        sq = sq_h.repeat_interleave(hd)
        out[f"layers.{i}.wqkv"] = q8
        out[f"layers.{i}.qkv_m"] = _mult(sw / torch.cat([sq, sk, sv]))
        out[f"layers.{i}.score_shift"] = shift.to(torch.int64)
        wo8, swo = _quant_rows(sd[p + "wo.weight"] * sv)
        out[f"layers.{i}.wo"], out[f"layers.{i}.wo_m"] = wo8, _mult(swo * (1 << FX))
        s2 = st[f"{i}.n2"] / 127
        out[f"layers.{i}.norm2"] = torch.round(sd[p + "norm2.weight"] / s2 * (1 << NORM_CB)).long()
        w18, sw1 = _quant_rows(sd[p + "w1.weight"] * s2)
        r = st[f"{i}.u"]                                   # per-channel input range
        out[f"layers.{i}.w1"], out[f"layers.{i}.w1_m"] = w18, _mult(sw1 * GELU_N / r)
        grid = torch.arange(-GELU_N, GELU_N + 1, dtype=torch.float64) / GELU_N
        g = F.gelu(grid[None, :] * r[:, None])             # [ff, 2N+1]
        sh = g.abs().amax(1).clamp(min=1e-9) / 127
        out[f"layers.{i}.gelu"] = torch.round(g / sh[:, None]).clamp(-127, 127).to(torch.int8)
        w28, sw2 = _quant_rows(sd[p + "w2.weight"] * sh)
        out[f"layers.{i}.w2"], out[f"layers.{i}.w2_m"] = w28, _mult(sw2 * (1 << FX))
    sf = st["nf"] / 127
    out["norm_f"] = torch.round(sd["norm_f.weight"] / sf * (1 << NORM_CB)).long()
    h8, se = _quant_rows(emb * sf)
    out["head"], out["head_m"] = h8, _mult(se * ZV)
    out.update(exp_tables())
    return out


def exp_tables() -> dict[str, torch.Tensor]:
    """exp(-i/Z) lookup tables of the integer softmaxes (attention and vocabulary)."""
    ia = torch.arange(ZA * 12, dtype=torch.float64)
    iv = torch.arange(ZV * 17, dtype=torch.float64)
    return {"exp_attn": torch.cat([torch.round(torch.exp(-ia / ZA) * (1 << 16)).long(),
                                   torch.zeros(1, dtype=torch.int64)]),
            "exp_vocab": torch.cat([torch.round(torch.exp(-iv / ZV) * (1 << 24)).long(),
                                    torch.zeros(1, dtype=torch.int64)])}


def attention_scales(sq: torch.Tensor, sk: torch.Tensor, hd: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen the per-head q scales *sq* (by < 2x) so that q.k in logit units is
    a power-of-two shift: the engine then scores attention with exact float32
    ops only.  *sk* holds the key scale of each query head.  Returns the new
    per-head q scales and the shifts."""
    c = sq * sk / math.sqrt(hd) * ZA
    shift = torch.floor(-torch.log2(c)).clamp(min=1)
    return sq * (2.0 ** -shift) / c, shift


def calibration_batch(tok: ByteTokenizer, text: bytes, window: int) -> torch.Tensor:
    """Up to 64 windows of *text*'s tokens: the activations that fix the static scales."""
    ids = tok.encode(text)
    n = min(64, len(ids) // window)
    if n < 1:
        raise ValueError("too little calibration text for one window")
    return torch.from_numpy(ids[: n * window].astype("int64")).view(n, window)


def export(float_dir: Path, out_path: Path, calib_text: bytes, notes: dict | None = None) -> str:
    """Quantise ``float_dir`` to *out_path*; returns the model id as hex."""
    model, tok = load_float(float_dir)
    tensors = quantize(model, calibration_batch(tok, calib_text, model.cfg.window))
    return save_model(out_path, model.cfg, tok, tensors, notes or {})


def float_int_bpb(float_model: Transformer, lm: "LanguageModel", text: bytes) -> tuple[float, float]:
    """Bits per byte of *text* under the float model and under its integer
    export *lm*, on the same windows: the integer-fidelity figure."""
    from .train import evaluate

    ids = lm.tokenizer.encode(text)
    return (evaluate(float_model, ids, lm.cfg.window, len(text)),
            int_bpb_windows(lm, ids, lm.cfg.window, len(text)))


def int_bpb_windows(model: "LanguageModel", ids, seq: int, n_bytes: int) -> float:
    """Bits per byte of the integer engine on non-overlapping windows of *seq*
    tokens: the same measure as ``train.evaluate`` gives for the float model."""
    from ..model.engine import KVCache

    n = (len(ids) - 1) // seq
    x = torch.from_numpy(ids[: n * seq + 1].astype("int64"))
    bits = 0.0
    for r in range(n):
        logits = model.engine.step(x[None, r * seq:(r + 1) * seq], KVCache())[0]
        f = model.engine.freqs(logits).double() + 1
        p = f.gather(1, x[r * seq + 1:(r + 1) * seq + 1, None]) / (1 << 24)
        bits -= float(torch.log2(p).sum())
    return bits / (n_bytes * (n * seq) / len(ids))


def main() -> None:
    import argparse
    import json

    from ..model.modelfile import LanguageModel, model_bytes

    ap = argparse.ArgumentParser(description="Quantise a float checkpoint into a model file.")
    ap.add_argument("float_dir", type=Path)
    ap.add_argument("out", type=Path, nargs="?",
                    default=Path(__file__).resolve().parent.parent / "models/default/model.safetensors")
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    args = ap.parse_args()
    held = (args.corpus / "heldout.txt").read_bytes()
    calib, test = held[:200_000], held[200_000:400_000]
    fm, tok = load_float(args.float_dir)
    tensors = quantize(fm, calibration_batch(tok, calib, fm.cfg.window))
    # measure the very tensors that are saved, then write them once with the figures
    f_bpb, i_bpb = float_int_bpb(fm, LanguageModel.from_bytes(
        model_bytes(fm.cfg, tok, tensors, {})), test)
    meta = json.loads((args.float_dir / "config.json").read_text())
    notes = {"train_step": meta.get("step"), "float_bpb": round(f_bpb, 4),
             "int_bpb": round(i_bpb, 4),
             "measured_on": "held-out corpus text, bytes 200000-400000, windows of cfg.window"}
    mid = save_model(args.out, fm.cfg, tok, tensors, notes)

    save_float(args.out.with_name(FLOAT_NAME), fm, bytes.fromhex(mid))
    print(json.dumps({"id": mid, **notes}, indent=2))


if __name__ == "__main__":
    main()
