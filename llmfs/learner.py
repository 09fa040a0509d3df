"""The store learns its data: the daemon fine-tunes a store model by itself.

What ``llmfs train`` does by hand (``training.py``), the compactor does on
its own once ``learn_after_mib`` of cold compressible data has passed
through it: it keeps a uniform sample of the blocks it tried (a reservoir of
``learn_sample_mib``), freezes it when the time comes (a tenth held back),
fine-tunes the shipped model on the rest a slice of steps per compactor round
(so training shares the compactor's CPU share and yields to foreground I/O
the same way), and measures the new model on the held-back blocks against
the store's current first encoding model with the real codec.  Only a model
that codes them at least ``learn_margin`` smaller is registered; the
compactor then tries it on every block again (its encoder tag changes) and
keeps whichever verified frame is smallest, as always.

The run survives a restart: the frozen sample and a checkpoint after every
slice (``Tuning.state``: weights, optimiser moments, step, sampler state)
live in ``STORE/learn/``, written by rename, so a daemon killed at any point
goes on from its last slice with bit-identical results.  The outcome of each
run (time, sample, both bpb, registered or not) is kept in the store's meta
``learn_last`` and, for a registered model, in the model file's notes, which
``llmfs stats`` shows.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

from .config import Config
from .store import Store

log = logging.getLogger(__name__)

LEARN_DIR = "learn"          # in the store directory
PENDING = "learn_pending_bytes"
MiB = 1 << 20


class Learner:
    """Store learning for one mounted store; driven by the compactor thread."""

    def __init__(self, store: Store, config: Config, stop: threading.Event,
                 lock: threading.RLock, seed: int = 0) -> None:
        self.store, self.config, self.stop, self.lock = store, config, stop, lock
        self.dir = Path(store.path) / LEARN_DIR
        self.reservoir: list[bytes] = []
        self.offered = 0                       # blocks offered since the last run began
        self.offered_bytes = 0
        self.rng = random.Random(seed)
        self.run = None                        # training.tune.Tuning, while one is under way
        self.held: list[bytes] = []
        self.stats: Counter[str] = Counter()
        self.broken = False                    # no base to train from: off for this mount

    # -- what the compactor calls ------------------------------------------
    def offer(self, blocks: list[bytes]) -> None:
        """Compressible blocks the compactor just tried: a uniform sample of
        them is kept (reservoir sampling, capped at ``learn_sample_mib``), and
        their bytes count towards the next run."""
        for b in blocks:
            self.offered += 1
            self.offered_bytes += len(b)
            # as many blocks as make learn_sample_mib at the mean size offered so far
            # (small files make small blocks)
            cap = max(2, int(self.config.learn_sample_mib * MiB * self.offered
                             / max(1, self.offered_bytes)))
            while len(self.reservoir) > cap:
                self.reservoir.pop(self.rng.randrange(len(self.reservoir)))
            if len(self.reservoir) < cap:
                self.reservoir.append(b)
            else:
                j = self.rng.randrange(self.offered)
                if j < cap:
                    self.reservoir[j] = b
        n = sum(map(len, blocks))
        if n:
            with self.lock:
                self.store.write(lambda t: t.set_meta(PENDING, self.pending() + n))

    def pending(self) -> int:
        return int(self.store.read(lambda t: t.meta(PENDING)) or 0)

    def due(self) -> bool:
        """A run is under way (here or in a checkpoint) or enough new data came."""
        if self.broken:
            return False
        return self.run is not None or (self.dir / "sample.json").exists() or \
            self.pending() >= self.config.learn_after_mib * MiB

    def work(self, seconds: float) -> bool:
        """Train for about *seconds* (whole steps), checkpoint, and finish the
        run when its steps are done; True when a new model was registered."""
        try:
            if self.run is None and not self._start():
                with self.lock:     # too few blocks to learn from: wait for as much again
                    self.store.write(lambda t: t.set_meta(PENDING, 0))
                return False
            t0 = time.monotonic()
            while not self.run.done and not self.stop.is_set() and \
                    time.monotonic() - t0 < seconds:
                self.run.run(1)
                self.stats["learn_steps"] += 1
            self._write("checkpoint.safetensors", self.run.state())
            self.stats["learn_ms"] += int(1000 * (time.monotonic() - t0))
            return self._finish() if self.run.done and not self.stop.is_set() else False
        except Exception:   # never the compactor's end; the checkpoint stays for a remount
            log.exception("store learning failed; off for this mount")
            self.broken = True
            return False

    # -- a run --------------------------------------------------------------
    def _start(self) -> bool:
        """Load the run in the checkpoint, or freeze a new sample; False when
        there are too few blocks to learn from yet."""
        from .model import DEFAULT_MODEL
        from .model.modelfile import LanguageModel
        from .training.floats import FLOAT_NAME, load_float_for
        from .training.tune import Tuning
        from .training.archive import sample_store, split

        train: list[bytes] = []
        if (self.dir / "sample.json").exists():
            try:
                train, held = self._read_sample()
            except (ValueError, OSError, KeyError) as e:
                log.warning("store learning: %s; starting over", e)
                shutil.rmtree(self.dir, ignore_errors=True)
        if not train:
            blocks = list(self.reservoir)
            want = int(self.config.learn_sample_mib * MiB)
            if sum(map(len, blocks)) < want // 2:   # after a restart the reservoir is empty
                blocks += sample_store(self.store, want - sum(map(len, blocks)), lambda f: [],
                                       seed=self.rng.randrange(1 << 30))
            blocks = list(dict.fromkeys(blocks))    # a block held back must not be trained on
            if len(blocks) < 2:
                return False
            train, held = split(blocks, 0.1, 128 << 10)
            self._write_sample(train, held)
        base = LanguageModel.load(DEFAULT_MODEL)
        float_model = load_float_for(base, DEFAULT_MODEL.with_name(FLOAT_NAME))
        self.run = Tuning(base, float_model, train, steps=self.config.learn_steps)
        self.held = held
        ckpt = self.dir / "checkpoint.safetensors"
        try:
            if ckpt.exists():
                self.run.resume(ckpt.read_bytes())
                log.info("store learning resumed at step %d of %d", self.run.step, self.run.steps)
        except (ValueError, KeyError, OSError) as e:   # damaged, or learn_steps changed
            log.warning("store learning: checkpoint not usable (%s); training again", e)
            ckpt.unlink(missing_ok=True)
            float_model = load_float_for(base, DEFAULT_MODEL.with_name(FLOAT_NAME))
            self.run = Tuning(base, float_model, train, steps=self.config.learn_steps)
        if self.run.step == 0:
            log.info("store learning started: %d blocks (%d bytes), %d steps",
                     len(train), sum(map(len, train)), self.run.steps)
        with self.lock:
            self.store.write(lambda t: t.set_meta(PENDING, 0))
        self.reservoir, self.offered, self.offered_bytes = [], 0, 0
        return True

    def _finish(self) -> bool:
        """Measure the new model against the store's first encoding model on
        the held-back blocks; register it if it wins by the margin."""
        from .model.modelfile import LanguageModel
        from .training.archive import llm_bytes, register

        files, encoders = self.store.read(lambda t: t.codec_models())
        rival = LanguageModel.from_bytes(files[0])
        train_bytes = sum(map(len, self.run.train))
        held_bytes = sum(map(len, self.held))
        notes = {"trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "trained_on": f"{len(self.run.train)} cold blocks of this store "
                               f"({train_bytes} bytes), sampled by the daemon",
                 "held_bytes": held_bytes}
        new = LanguageModel.from_bytes(self.run.finish(notes))
        base_stored, new_stored = llm_bytes(rival, self.held), llm_bytes(new, self.held)
        wins = new_stored < (1 - self.config.learn_margin) * base_stored
        outcome = {**notes, "model": new.id.hex()[:16], "rival": rival.id.hex()[:16],
                   "held_bpb": round(8 * new_stored / held_bytes, 4),
                   "rival_bpb": round(8 * base_stored / held_bytes, 4), "registered": wins}
        if wins:   # the notes in the file say what it was measured at
            data = self.run.finish({**notes, "held_bpb": outcome["held_bpb"],
                                    "rival_bpb": outcome["rival_bpb"]})
            with self.lock:
                register(self.store, data)
        with self.lock:
            self.store.write(lambda t: t.set_meta("learn_last", json.dumps(outcome)))
        log.info("store learning: %s", outcome)
        self.stats["learn_runs"] += 1
        self.stats["learn_registered"] += int(wins)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.run, self.held = None, []
        return wins

    # -- the run's files ------------------------------------------------------
    def _write(self, name: str, data: bytes) -> None:
        self.dir.mkdir(exist_ok=True)
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)

    def _write_sample(self, train: list[bytes], held: list[bytes]) -> None:
        """The frozen sample: the bytes, then their lengths (the json is the
        commit point: a run without it starts over)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self._write("sample.bin", b"".join(train + held))
        self._write("sample.json", json.dumps({"train": list(map(len, train)),
                                               "held": list(map(len, held))}).encode())

    def _read_sample(self) -> tuple[list[bytes], list[bytes]]:
        lens = json.loads((self.dir / "sample.json").read_bytes())
        data = (self.dir / "sample.bin").read_bytes()
        out, pos = [], 0
        for n in lens["train"] + lens["held"]:
            out.append(data[pos:pos + n])
            pos += n
        if pos != len(data):
            raise ValueError(f"{self.dir}: damaged sample")
        k = len(lens["train"])
        return out[:k], out[k:]
