"""Models: tokenizer, integer engine, training.  This module itself stays
free of torch so stores and tools can name and identify models cheaply."""
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default" / "model.safetensors"
# The id recorded in models/default/MODEL.md: a damaged or swapped default file is refused.
DEFAULT_MODEL_ID = "b823fd72a0bd2b5616630ec9034a848d64ec13d26f374e2c76f830df760d3af0"


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


def read_model_file(path: Path | str) -> bytes:
    """A model file's bytes; the shipped default only if its hash is the recorded one."""
    data = Path(path).read_bytes()
    if Path(path).resolve() == DEFAULT_MODEL and model_id(data).hex() != DEFAULT_MODEL_ID:
        raise ValueError(f"{path}: the shipped model file is damaged (its hash is "
                         f"{model_id(data).hex()[:16]}, not {DEFAULT_MODEL_ID[:16]}); "
                         "reinstall llmfs")
    return data


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


__all__ = ["DEFAULT_MODEL", "DEFAULT_MODEL_ID", "ModelFile", "model_id", "model_metadata",
           "read_model_file"]
