"""The store learns its data: the daemon trains a store model by itself,
within the compactor's CPU share, survives being stopped mid-way, and
registers the model only when it wins on held-back blocks."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from llmfs.codec.frame import Codec, Frame
from llmfs.config import Config
from llmfs.learner import LEARN_DIR, Learner
from llmfs.model import DEFAULT_MODEL, DEFAULT_MODEL_ID
from llmfs.model.modelfile import LanguageModel
from llmfs.training.floats import FLOAT_NAME, load_float_for
from llmfs.training.tune import Tuning
from llmfs.store import Store
from llmfs.training.archive import generated_logs

from conftest import Mounted
from test_compactor import live, wait_for

LOGS = {f"app-{i}.log": generated_logs(40 + i, 1000) for i in range(3)}   # 330 KB
LEARN = ("compact_after_s=0,compact_interval_s=0.2,compact_batch=4,compact_cpu_share=0.5,"
         "learn_after_mib=0.2,learn_sample_mib=0.3,learn_steps=48")


def test_a_tuning_run_resumed_from_its_checkpoint_gives_the_same_model():
    base = LanguageModel.load(DEFAULT_MODEL)
    blocks = [generated_logs(i, 300) for i in range(3)]

    def run() -> Tuning:
        return Tuning(base, load_float_for(base, DEFAULT_MODEL.with_name(FLOAT_NAME)), blocks,
                      steps=6)
    whole = run()
    whole.run(6)
    first = run()
    first.run(2)
    second = run()                      # a new process would start the same way
    second.resume(first.state())
    assert second.step == 2 and not second.done
    second.run(10)
    assert second.done and second.finish() == whole.finish()


def test_learner_offers_a_uniform_sample_and_counts_towards_the_next_run(tmp_path):
    subprocess.run([sys.executable, "-m", "llmfs.cli", "mkfs", str(tmp_path / "store"),
                    "--block-size", "4096"], check=True, capture_output=True)
    s = Store(tmp_path / "store")
    try:
        cfg = Config(learn_after_mib=0.05, learn_sample_mib=0.02)   # 5 blocks of 4 KiB
        ln = Learner(s, cfg, threading.Event(), threading.RLock())
        assert not ln.due()
        blocks = [bytes([i]) * 4096 for i in range(40)]
        ln.offer(blocks[:10])
        assert ln.pending() == 40960 and not ln.due()
        ln.offer(blocks[10:])
        assert ln.due() and len(ln.reservoir) == 5 and set(ln.reservoir) <= set(blocks)
        assert any(b in ln.reservoir for b in blocks[10:])   # later blocks get their chance
        small = Learner(s, cfg, threading.Event(), threading.RLock())
        small.offer([i.to_bytes(2, "little") * 50 for i in range(300)])   # small files
        assert len(small.reservoir) == int(0.02 * (1 << 20) / 100)        # the bytes, not a count
    finally:
        s.close()


@pytest.mark.slow   # about 2 minutes: make test-slow (CI runs it when time allows)
def test_daemon_trains_registers_and_uses_a_store_model_and_resumes_after_a_stop(tmp_path):
    m = Mounted(tmp_path, options=LEARN)
    m.mkfs("--block-size", "16384")
    m.start()
    try:
        t0 = time.monotonic()
        for name, data in LOGS.items():
            m.path(name).write_bytes(data)
        wait_for(lambda: live(m).get("learn_steps", 0) >= 1, timeout=300)
    finally:
        m.stop()                        # mid-way: the run waits in its checkpoint
    assert (m.store / LEARN_DIR / "checkpoint.safetensors").exists()
    assert (m.store / LEARN_DIR / "sample.json").exists()
    m.start()
    try:
        t1 = time.monotonic()
        wait_for(lambda: live(m).get("learn_runs", 0) >= 1, timeout=400)
        st = live(m)
        busy = (st.get("learn_ms", 0) + st.get("compact_ms", 0)) / 1000
        assert busy <= 0.5 * (time.monotonic() - t1) + 15, st   # the CPU share, a slice of slack
        assert st["learn_registered"] == 1, st
        # the compactor tries every block again with the new model, which wins on logs
        s = Store(m.store, readonly=True)
        enc = s.read(lambda t: t.encode_models())
        s.close()
        assert len(enc) == 2 and enc[1].hex() == DEFAULT_MODEL_ID[:16]

        def used_new() -> bool:
            s = Store(m.store, readonly=True)
            try:
                return any(Frame.unpack(f).codec == Codec.LLM and Frame.unpack(f).model == enc[0]
                           for _, f in s.read(lambda t: list(t.all_frames())))
            finally:
                s.close()
        wait_for(used_new, timeout=300)
        for name, data in LOGS.items():
            assert m.path(name).read_bytes() == data
    finally:
        m.stop()
    assert "resumed at step" in m.log.read_text()
    assert not (m.store / LEARN_DIR).exists()
    r = subprocess.run([sys.executable, "-m", "llmfs.cli", "stats", str(m.store)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and f"model {enc[0].hex()}" in r.stdout, r.stdout + r.stderr
    assert "trained 20" in r.stdout and "sampled by the daemon" in r.stdout, r.stdout
    assert "store learning: last run" in r.stdout and "registered" in r.stdout
    last = json.loads(subprocess.run(
        [sys.executable, "-m", "llmfs.cli", "stats", str(m.store), "--json"],
        capture_output=True, text=True).stdout)["learn_last"]
    assert last["registered"] and last["held_bpb"] < 0.97 * last["rival_bpb"]
    assert time.monotonic() - t0 < 900


def test_a_checkpoint_of_another_run_is_dropped_not_fatal(tmp_path):
    """learn_steps changed between mounts: the checkpoint no longer fits the
    run, so training starts again from the same frozen sample."""
    subprocess.run([sys.executable, "-m", "llmfs.cli", "mkfs", str(tmp_path / "store"),
                    "--block-size", "16384"], check=True, capture_output=True)
    s = Store(tmp_path / "store")
    try:
        blocks = [generated_logs(60 + i, 120)[:16384] for i in range(4)]
        first = Learner(s, Config(learn_after_mib=0.01, learn_steps=3), threading.Event(),
                        threading.RLock())
        first.offer(blocks + blocks[:2])                   # a block tried twice is one block
        assert first.due() and not first.work(0.001)       # one step, then a checkpoint
        sample = first.run.train + first.held
        assert sorted(sample) == sorted(blocks)            # held-back blocks are not trained on
        assert first.run.step == 1 and (s.path / LEARN_DIR / "checkpoint.safetensors").exists()
        again = Learner(s, Config(learn_after_mib=0.01, learn_steps=5), threading.Event(),
                        threading.RLock())
        assert again.due() and again._start()
        assert again.run.step == 0 and not again.broken and again.run.train == first.run.train
    finally:
        s.close()
