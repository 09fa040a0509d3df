"""Models: tokenizer, integer engine, training.  This module itself stays
free of torch so stores and tools can name and identify models cheaply."""
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS_DIR / "default" / "model.safetensors"
# Every model file shipped in the package, with the id recorded in its MODEL.md.
# The default encodes; a retired default stays so that what it encoded (.llmz
# files name their model by id) still decodes.  A damaged or swapped file is refused.
SHIPPED = {
    DEFAULT_MODEL: "bb41ff377233cbfafcffff117ce6c5b3428998103ad662611854c97b58a1c813",
    MODELS_DIR / "technical" / "model.safetensors":    # the default until 2026-12-01
        "4e9df863f41044a3bbac4c65d9039dfc8d03532c9048975dda933f089ac9755b",
    MODELS_DIR / "starter" / "model.safetensors":      # the default until 2026-11-23
        "b823fd72a0bd2b5616630ec9034a848d64ec13d26f374e2c76f830df760d3af0",
}
DEFAULT_MODEL_ID = SHIPPED[DEFAULT_MODEL]


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
    """A model file's bytes; a shipped model only if its hash is the recorded one."""
    data = Path(path).read_bytes()
    want = SHIPPED.get(Path(path).resolve())
    if want is not None and model_id(data).hex() != want:
        raise ValueError(f"{path}: the shipped model file is damaged (its hash is "
                         f"{model_id(data).hex()[:16]}, not {want[:16]}); reinstall llmfs")
    return data


def shipped_model(mid: bytes) -> Path | None:
    """The shipped model file with id *mid*, if any (default or retired)."""
    return next((p for p, h in SHIPPED.items() if h == mid.hex()), None)


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


__all__ = ["DEFAULT_MODEL", "DEFAULT_MODEL_ID", "SHIPPED", "ModelFile", "model_id",
           "model_metadata", "read_model_file", "shipped_model"]
