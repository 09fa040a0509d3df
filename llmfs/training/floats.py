"""Float checkpoints: the float weights behind an integer model.

Training writes a directory (float.safetensors, config.json, tokenizer.json:
``load_float``); an exported model keeps the float weights it was quantised
from next to it (``FLOAT_NAME``, tagged with the integer model's id:
``save_float`` / ``load_float_for``), which fine-tuning starts from.  Its own
module so that training, export and fine-tuning all read and write them
without importing each other in a circle.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import load_file, save_file

from ..model.tokenizer import ByteTokenizer
from .net import Config, Transformer

if TYPE_CHECKING:
    from ..model.modelfile import LanguageModel

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



def load_float(float_dir: Path) -> tuple[Transformer, ByteTokenizer]:
    """A float checkpoint written by ``train.py`` (float.safetensors, config.json, tokenizer.json)."""
    meta = json.loads((float_dir / "config.json").read_text())
    model = Transformer(Config(**{k: meta[k] for k in Config.__dataclass_fields__ if k in meta}))
    model.load_state_dict(load_file(str(float_dir / "float.safetensors")))
    model.eval()
    return model, ByteTokenizer.load(float_dir / "tokenizer.json")
