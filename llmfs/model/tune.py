"""Fine-tuning a shipped model on an archive's own data.

As ``zstd --train`` builds a dictionary from samples, ``llmfs train`` starts
from the float weights the base model was exported from, trains a few
hundred steps on a sample of the archive, and quantises the result with
static scales calibrated on that sample.  The tokenizer and architecture stay
the base model's, so the new model runs in the same exact engine.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .export import calibration_batch, quantize
from .modelfile import LanguageModel, model_bytes
from .net import Config, Transformer
from .train import train_steps

FLOAT_FORMAT = "llmfs-float-1"
FLOAT_NAME = "float.safetensors"   # kept next to the model file it was exported to


def save_float(path: Path, model: Transformer, int_model_id: bytes) -> None:
    """The float weights behind integer model *int_model_id* (what fine-tuning starts from)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={
        "format": FLOAT_FORMAT, "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "model": int_model_id.hex()})


def load_float_for(base: LanguageModel, path: Path) -> Transformer:
    """The float model *base* was exported from, read from *path*."""
    from safetensors import safe_open

    if not path.exists():
        raise ValueError(f"{path}: no float weights next to the base model; "
                         "fine-tuning needs the checkpoint the model was exported from")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FLOAT_FORMAT or meta.get("model") != base.id.hex():
        raise ValueError(f"{path}: float weights of another model (not {base.id.hex()[:16]})")
    model = Transformer(Config(**json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path)))
    return model


def finetune(base: LanguageModel, model: Transformer, train: list[bytes], *, steps: int,
             batch: int = 16, lr: float = 1e-3, seed: int = 0,
             progress: Callable[[int], None] | None = None, notes: dict | None = None) -> bytes:
    """Train *model* (the float twin of *base*, changed in place) on the blocks
    *train*; returns the new integer model file."""
    tok = base.tokenizer
    ids = np.concatenate([tok.encode(b) for b in train]).astype(np.int64)
    torch.manual_seed(seed)
    train_steps(model, ids, steps=steps, batch=batch, lr=lr, seed=seed,
                warmup=max(1, min(50, steps // 5)), progress=progress)
    calib = calibration_batch(tok, b"".join(train)[:200_000], model.cfg.window)
    with torch.no_grad():
        tensors = quantize(model, calib)
    return model_bytes(model.cfg, tok, tensors,
                       {"base": base.id.hex(), "steps": steps, "train_tokens": int(len(ids)),
                        **(notes or {})})
