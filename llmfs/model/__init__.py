"""Models: tokenizer, integer engine, training.  This module itself stays
free of torch so stores and tools can name and identify models cheaply."""
import hashlib
from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default" / "model.safetensors"


def model_id(data: bytes) -> bytes:
    """A model's identity: the blake2b-256 of its file."""
    return hashlib.blake2b(data, digest_size=32).digest()


__all__ = ["DEFAULT_MODEL", "model_id"]
