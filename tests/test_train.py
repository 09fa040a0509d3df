"""``llmfs train``: fine-tuning on an archive's own data, weights round trips,
the shipped model's hash, and the compactor using a trained model."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load

from llmfs.codec.frame import Codec, Frame
from llmfs.model import DEFAULT_MODEL, DEFAULT_MODEL_ID, SHIPPED, model_id, read_model_file
from llmfs.model.modelfile import LanguageModel, model_bytes
from llmfs.training.floats import FLOAT_NAME, load_float_for, save_float
from llmfs.store import Store
from llmfs.training.archive import generated_logs as log_lines, llm_bytes


def llmfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmfs.cli", *args], capture_output=True,
                          text=True)


def test_shipped_model_hash_is_checked(tmp_path, monkeypatch):
    for path, mid in SHIPPED.items():   # the default and retired defaults, each with a card
        assert model_id(read_model_file(path)).hex() == mid
        assert mid in (path.parent / "MODEL.md").read_text()
    data = read_model_file(DEFAULT_MODEL)
    assert SHIPPED[DEFAULT_MODEL] == DEFAULT_MODEL_ID
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setitem(SHIPPED, damaged.resolve(), DEFAULT_MODEL_ID)
    with pytest.raises(ValueError, match="damaged"):
        read_model_file(damaged)


def test_weights_round_trip(tmp_path):
    """Integer model file and float twin survive save/load; a float file of
    another model is refused."""
    base = LanguageModel.load()
    fm = load_float_for(base, DEFAULT_MODEL.with_name(FLOAT_NAME))
    again = LanguageModel.from_bytes(model_bytes(base.cfg, base.tokenizer, load(base.data),
                                                 base.notes))
    assert again.cfg == base.cfg and again.notes == base.notes
    assert all(torch.equal(load(again.data)[k], v) for k, v in load(base.data).items())
    # the same model written again is the same bytes, so the same id (safetensors
    # itself writes the metadata keys in a different order from call to call)
    assert {model_bytes(base.cfg, base.tokenizer, load(base.data), base.notes)
            for _ in range(4)} == {again.data}
    junk = bytes(random.Random(0).randrange(256) for _ in range(3000))
    assert again.tokenizer.decode(again.tokenizer.encode(junk)) == junk
    save_float(tmp_path / FLOAT_NAME, fm, base.id)
    back = load_float_for(base, tmp_path / FLOAT_NAME)
    assert all(torch.equal(a, b) for a, b in zip(fm.state_dict().values(),
                                                  back.state_dict().values()))
    save_float(tmp_path / FLOAT_NAME, fm, bytes(32))
    with pytest.raises(ValueError, match="another model"):
        load_float_for(base, tmp_path / FLOAT_NAME)


@pytest.mark.slow   # make test-slow
def test_train_directory_lowers_bpb_on_held_back_data(tmp_path):
    src = tmp_path / "logs"
    src.mkdir()
    for i in range(3):
        (src / f"app-{i}.log").write_bytes(log_lines(i, 1500))
    out = tmp_path / "m.safetensors"
    r = llmfs("train", str(src), "--steps", "40", "--sample", "400K", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "held-back" in r.stdout and out.exists()
    new = LanguageModel.load(out)
    assert new.notes["base"] == DEFAULT_MODEL_ID
    unseen = log_lines(99, 400)[:32768]          # same generator, never sampled
    base_bytes = llm_bytes(LanguageModel.load(), [unseen])
    new_bytes = llm_bytes(new, [unseen])
    assert new_bytes < 0.8 * base_bytes, (new_bytes, base_bytes)


@pytest.mark.slow   # make test-slow
def test_train_store_registers_model_and_compactor_uses_it(tmp_path):
    src, store, dst = tmp_path / "logs", tmp_path / "store", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        (src / f"app-{i}.log").write_bytes(log_lines(10 + i, 1000))
    (src / "notes.txt").write_bytes((DEFAULT_MODEL.parent / "MODEL.md").read_bytes())
    for args in (("mkfs", str(store), "--block-size", "16384"), ("import", str(src), str(store)),
                 ("train", str(store), "--steps", "30", "--sample", "300K")):
        r = llmfs(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert "now encodes with" in r.stdout
    s = Store(store, readonly=True)
    enc = s.read(lambda t: t.encode_models())
    models = s.read(lambda t: t.models())
    s.close()
    assert len(enc) == 2 and enc[1].hex() == DEFAULT_MODEL_ID[:16] and enc[0] in models
    r = llmfs("compact", str(store), "--limit", "3")
    assert r.returncode == 0, r.stderr
    s = Store(store, readonly=True)
    used = [Frame.unpack(f).model for _, f in s.read(lambda t: list(t.all_frames()))
            if Frame.unpack(f).codec == Codec.LLM]
    s.close()
    assert used and enc[0] in used                    # log blocks went to the trained model
    assert llmfs("fsck", str(store), "--scrub").returncode == 0
    st = json.loads(llmfs("stats", str(store), "--json").stdout)
    assert st["models"].get(enc[0].hex(), 0) >= 1
    assert llmfs("export", str(store), str(dst)).returncode == 0
    for p in src.iterdir():
        assert (dst / p.name).read_bytes() == p.read_bytes()
    shutil.rmtree(dst)


def test_train_steps_draw_the_extra_share_from_extra_text():
    """``--extra``: a share of each batch comes from the extra token stream; a
    model trained with all of its batch there learns the extra text's next
    token, with none of it the corpus's."""
    import numpy as np

    from llmfs.training.net import Config, Transformer
    from llmfs.training.train import train_steps

    cfg = Config(vocab=16, d_model=16, n_layer=1, n_head=2, d_ff=32, window=8)
    corpus, extra = np.array([1, 2] * 200), np.array([1, 3] * 200)
    after_one = {}
    for share in (0.0, 1.0):
        torch.manual_seed(0)
        model = Transformer(cfg)
        train_steps(model, corpus, steps=60, batch=4, lr=1e-2, warmup=5, extra=extra,
                    extra_share=share)
        with torch.no_grad():
            after_one[share] = model(torch.tensor([[2, 1, 2, 1, 2, 1]]))[0, -1].argmax().item()
    assert after_one == {0.0: 2, 1.0: 3}
    with pytest.raises(ValueError, match="too little text"):
        train_steps(Transformer(cfg), corpus, steps=1, batch=4, lr=1e-2, extra=extra[:5],
                    extra_share=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_steps(Transformer(cfg), corpus, steps=1, batch=4, lr=1e-2, extra=extra,
                    extra_share=1.5)
