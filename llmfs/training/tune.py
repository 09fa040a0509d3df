"""Fine-tuning a shipped model on an archive's own data.

As ``zstd --train`` builds a dictionary from samples, ``llmfs train`` starts
from the float weights the base model was exported from, trains a few
hundred steps on a sample of the archive, and quantises the result with
static scales calibrated on that sample.  The tokenizer and architecture stay
the base model's, so the new model runs in the same exact engine.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable

import numpy as np
import torch

from ..model.modelfile import LanguageModel, model_bytes
from .export import calibration_batch, quantize
from .net import Transformer
from .train import check_enough, optimizer, train_step


class Tuning:
    """A fine-tuning run that can stop after any step and go on later: the
    daemon's store learning (``llmfs/learner.py``) runs it a slice at a time
    within the compactor's CPU share, and a checkpoint (``state`` /
    ``resume``: the float weights, AdamW's moments, the step and the batch
    sampler's state, all in one safetensors file, no pickle) lets it survive a
    restart.  ``finetune`` runs one to the end at once."""

    def __init__(self, base: LanguageModel, model: Transformer, train: list[bytes], *,
                 steps: int, batch: int = 16, lr: float = 1e-3, seed: int = 0) -> None:
        self.base, self.model, self.train = base, model, train
        self.steps, self.batch, self.lr = steps, batch, lr
        self.ids = np.concatenate([base.tokenizer.encode(b) for b in train]).astype(np.int64)
        check_enough(model, self.ids)
        torch.manual_seed(seed)
        self.opt = optimizer(model, lr)
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self._tensors: dict[str, torch.Tensor] | None = None   # quantised, once done

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    def run(self, n: int) -> None:
        """Up to *n* more steps."""
        self.model.train()
        for _ in range(min(n, self.steps - self.step)):
            self.step += 1
            train_step(self.model, self.opt, self.rng, self.ids, self.step, steps=self.steps,
                       batch=self.batch, lr=self.lr, warmup=max(1, min(50, self.steps // 5)))
        self.model.eval()

    def state(self) -> bytes:
        """A checkpoint of the run so far."""
        from safetensors.torch import save

        tensors = {f"model.{k}": v.detach().contiguous() for k, v in self.model.state_dict().items()}
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            tensors.update({f"opt.{i}.{k}": v.detach().reshape(-1).contiguous()
                            if k == "step" else v.detach().contiguous() for k, v in st.items()})
        return save(tensors, metadata={"format": "llmfs-tuning-1", "step": str(self.step),
                                       "steps": str(self.steps),
                                       "rng": json.dumps(self.rng.bit_generator.state),
                                       "groups": json.dumps(opt["param_groups"])})

    def resume(self, data: bytes) -> None:
        """Go on from a checkpoint of a run of the same base, sample and length."""
        from safetensors.torch import load

        tensors = load(data)
        (n,) = struct.unpack_from("<Q", data)
        meta = json.loads(data[8:8 + n]).get("__metadata__", {})
        if meta.get("format") != "llmfs-tuning-1" or int(meta["steps"]) != self.steps:
            raise ValueError("checkpoint of another fine-tuning run")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
        self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["groups"])})
        self.rng.bit_generator.state = json.loads(meta["rng"])
        self.step = int(meta["step"])

    def finish(self, notes: dict | None = None) -> bytes:
        """The integer model file of the run (quantised with scales calibrated
        on its sample, once; *notes* go into the file's header)."""
        if self._tensors is None:
            calib = calibration_batch(self.base.tokenizer, b"".join(self.train)[:200_000],
                                      self.model.cfg.window)
            with torch.no_grad():
                self._tensors = quantize(self.model, calib)
        return model_bytes(self.model.cfg, self.base.tokenizer, self._tensors,
                           {"base": self.base.id.hex(), "steps": self.steps,
                            "train_tokens": int(len(self.ids)), **(notes or {})})


def finetune(base: LanguageModel, model: Transformer, train: list[bytes], *, steps: int,
             batch: int = 16, lr: float = 1e-3, seed: int = 0,
             progress: Callable[[int], None] | None = None, notes: dict | None = None) -> bytes:
    """Train *model* (the float twin of *base*, changed in place) on the blocks
    *train*; returns the new integer model file."""
    run = Tuning(base, model, train, steps=steps, batch=batch, lr=lr, seed=seed)
    while not run.done:
        run.run(1)
        if progress:
            progress(1)
    return run.finish(notes)
