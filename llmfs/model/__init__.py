"""Models: tokenizer, integer engine, training.  This module itself stays
free of torch so stores and tools can name and identify models cheaply."""
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default" / "model.safetensors"


def model_id(data: bytes) -> bytes:
    """A model's identity: the blake2b-256 of its file."""
    return hashlib.blake2b(data, digest_size=32).digest()


def model_metadata(data: bytes) -> dict:
    """The llmfs metadata of a model file (safetensors header), without loading weights."""
    header_len = int.from_bytes(data[:8], "little")
    try:
        return json.loads(data[8:8 + header_len]).get("__metadata__", {})
    except (ValueError, UnicodeDecodeError):
        return {}


@dataclass(frozen=True)
class ModelFile:
    """A model known by its identity and tokenizer only: what a process needs
    that hands the engine work to worker processes (it never imports torch)."""
    data: bytes = field(repr=False)

    @cached_property
    def id(self) -> bytes:
        return model_id(self.data)

    @property
    def short_id(self) -> bytes:
        return self.id[:8]

    @cached_property
    def tokenizer(self):
        from .tokenizer import ByteTokenizer

        return ByteTokenizer.from_str(model_metadata(self.data)["tokenizer"])


__all__ = ["DEFAULT_MODEL", "ModelFile", "model_id", "model_metadata"]
