"""Shared fixtures: the shipped default model, loaded once per session."""
from __future__ import annotations

import pytest

from llmfs.codec.policy import BlockCodec
from llmfs.model.modelfile import LanguageModel

TEXT = (b"The quick brown fox jumps over the lazy dog. Storage admins keep cold "
        b"archives for years, and every byte must come back exactly as it was written.\n")

# Non-repeating English: the model should beat zstd on it, as it does on real text.
PROSE = (
    b"When the archive was first set up, nobody expected it to grow this quickly. The "
    b"team had planned for a few terabytes of logs and reports, but within a year the "
    b"volume had doubled twice. Most of the data was written once and rarely read again, "
    b"which made it a good candidate for slower, denser storage. The administrators "
    b"decided to keep recent files on fast disks and to move older material to a "
    b"compressed tier. Reading an old report now takes a little longer, yet the savings "
    b"in space and power were large enough that nobody has asked to change the design. "
    b"The important rule, written at the top of the operations manual, is simple: a file "
    b"that goes in must come out exactly the same, whatever happens to the machines.\n")


@pytest.fixture(scope="session")
def model() -> LanguageModel:
    return LanguageModel.load()


@pytest.fixture()
def codec(model: LanguageModel) -> BlockCodec:
    return BlockCodec(model)
