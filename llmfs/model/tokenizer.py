"""Lossless byte-level BPE tokenizer.

Every byte is mapped 1:1 to the latin-1 character with the same code, so the
BPE alphabet is exactly the 256 byte values and any byte string (invalid
UTF-8, NUL, CRLF, random binary) tokenizes and maps back exactly.  No
normalizer, no unknown token; decoding goes through an id -> bytes table, not
through the HF decoder, so it cannot rewrite anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

# GPT-2 split, applied to latin-1 text.  Behaviour "isolated" keeps the text
# between matches as pieces too, so no character is ever dropped.
SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ALPHABET = [chr(b) for b in range(256)]


class ByteTokenizer:
    """Wraps an HF BPE tokenizer whose symbols are latin-1 characters."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        vocab = tok.get_vocab()
        self.vocab_size = len(vocab)
        table: list[bytes] = [b""] * self.vocab_size
        for s, i in vocab.items():
            table[i] = s.encode("latin-1")
        if any(len(t) == 0 for t in table):
            raise ValueError("tokenizer has ids without bytes")
        self.id_bytes = table
        for b in range(256):
            if vocab.get(chr(b)) is None:
                raise ValueError(f"tokenizer alphabet lacks byte {b}")

    @classmethod
    def load(cls, path: Path | str) -> "ByteTokenizer":
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, text: str) -> "ByteTokenizer":
        return cls(Tokenizer.from_str(text))

    def to_str(self) -> str:
        return self.tok.to_str()

    def encode(self, data: bytes) -> np.ndarray:
        if not data:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.tok.encode(data.decode("latin-1")).ids, dtype=np.int64)

    def encode_batch(self, blocks: Sequence[bytes]) -> list[np.ndarray]:
        enc = self.tok.encode_batch([b.decode("latin-1") for b in blocks])
        return [np.asarray(e.ids, dtype=np.int64) for e in enc]

    def decode(self, ids: Iterable[int]) -> bytes:
        t = self.id_bytes
        return b"".join(t[i] for i in ids)


def train(files: Sequence[Path | str], vocab_size: int) -> ByteTokenizer:
    """Train a BPE vocabulary of *vocab_size* ids (>= 256) on *files*."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=ALPHABET,
                                  show_progress=False, special_tokens=[])

    def chunks() -> Iterable[str]:
        for f in files:
            data = Path(f).read_bytes()
            for i in range(0, len(data), 1 << 16):
                yield data[i:i + (1 << 16)].decode("latin-1")

    tok.train_from_iterator(chunks(), trainer=trainer)
    return ByteTokenizer(tok)
