"""Model files: one safetensors file holding integer tensors, the config and
the tokenizer, identified by the BLAKE2b-256 hash of its bytes.

A model is data: an archive stores the file itself, so blocks stay readable
without the source tree.  Frames record the first 8 bytes of the id.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from . import DEFAULT_MODEL, model_id, model_metadata, read_model_file
from .intformat import Config
from .tokenizer import ByteTokenizer

if TYPE_CHECKING:
    import torch

    from .engine import Engine

FORMAT = "llmfs-int-1"


def model_bytes(cfg: Config, tok: ByteTokenizer, tensors: dict[str, torch.Tensor],
                notes: dict) -> bytes:
    """The model file for integer *tensors* (see ``export.quantize``)."""
    from safetensors.torch import save

    meta = {"format": FORMAT, "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "tokenizer": tok.to_str(), "notes": json.dumps(notes, sort_keys=True)}
    data = save({k: v.contiguous() for k, v in sorted(tensors.items())}, metadata=meta)
    return _sorted_metadata(data)


def _sorted_metadata(data: bytes) -> bytes:
    """The same safetensors file with its metadata keys in sorted order.

    safetensors writes the metadata map in no fixed order, so the same model
    exported twice got two ids; the id is the hash of the bytes, so the
    header is rewritten canonically (same tensors, offsets relative to the
    data section, header padded with spaces to 8 bytes as safetensors does)."""
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


def save_model(path: Path, cfg: Config, tok: ByteTokenizer, tensors: dict[str, torch.Tensor],
               notes: dict) -> str:
    """Write the model file; returns its id as hex."""
    data = model_bytes(cfg, tok, tensors, notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return model_id(data).hex()


@dataclass
class LanguageModel:
    """A loaded model: tokenizer + identity; its torch engine is built (and
    torch imported) on first use -- the native core (``native.py``) reads
    the file itself."""
    id: bytes          # 32-byte content hash
    cfg: Config
    tokenizer: ByteTokenizer
    notes: dict
    data: bytes = field(repr=False)  # the model file itself (workers and stores need it)
    device: str = "cpu"

    @cached_property
    def engine(self) -> Engine:
        """The torch engine (the reference, the strong tier, CUDA)."""
        from safetensors.torch import load

        from .engine import Engine

        return Engine(self.cfg, load(self.data), self.device)

    @property
    def short_id(self) -> bytes:
        return self.id[:8]

    @classmethod
    def from_bytes(cls, data: bytes, device: str = "cpu") -> "LanguageModel":
        meta = model_metadata(data)
        if meta.get("format") != FORMAT:
            raise ValueError(f"not an llmfs model file (format {meta.get('format')!r})")
        cfg = Config(**json.loads(meta["config"]))
        tok = ByteTokenizer.from_str(meta["tokenizer"])
        if tok.vocab_size != cfg.vocab:
            raise ValueError("tokenizer and model disagree on the vocabulary size")
        return cls(model_id(data), cfg, tok, json.loads(meta.get("notes", "{}")), data,
                   str(device))

    @classmethod
    def load(cls, path: Path | str = DEFAULT_MODEL, device: str = "cpu") -> "LanguageModel":
        return cls.from_bytes(read_model_file(path), device)
