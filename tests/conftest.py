"""Shared fixtures: the shipped default model (loaded once), real mounts."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from llmfs.codec.policy import BlockCodec
from llmfs.model.engine import KVCache
from llmfs.model.modelfile import LanguageModel
from llmfs.store import Store

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


class Mounted:
    """A store mounted by a real `llmfs mount -f` daemon in a subprocess."""

    def __init__(self, root: Path, options: str = "") -> None:
        self.store = root / "store"
        self.mnt = root / "mnt"
        self.log = root / "daemon.log"
        self.options = options
        self.mnt.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def mkfs(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "llmfs.cli", "mkfs", str(self.store), *args],
                       check=True, capture_output=True)

    def start(self) -> None:
        cmd = [sys.executable, "-m", "llmfs.cli", "mount", "-f", str(self.store), str(self.mnt),
               "--log", str(self.log)]
        if self.options:
            cmd += ["-o", self.options]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount failed: {self.proc.stderr.read().decode()}")
            if time.time() > deadline:
                raise RuntimeError("mount did not appear")
            time.sleep(0.05)

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None:   # never started, or killed: clear a dead mount left behind
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
            return
        if self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would.  Its dead mount stays behind,
        as after a real crash: the next ``llmfs mount`` must clear it itself."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def path(self, *parts: str) -> Path:
        return self.mnt.joinpath(*parts)


@pytest.fixture()
def mounted(tmp_path: Path):
    m = Mounted(tmp_path)
    m.mkfs()
    m.start()
    yield m
    m.stop()


def recode_as_match_frames(store: Path, model: LanguageModel,
                           monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], list[bytes],
                                                                     list[bytes]]:
    """Re-code every block of the (unmounted) *store* as llm frames of version 3
    (the match model only: what llmfs wrote before the n-gram caches); returns
    the block keys, their raw bytes and the frames now stored."""
    from llmfs.codec import llm
    from llmfs.codec.frame import MATCH

    s = Store(store)
    keys = s.read(lambda t: [k for k, _ in t.all_frames()])
    raws = BlockCodec(model).decode_blocks(s.read(lambda t: [t.frame(k) for k in keys]))
    with monkeypatch.context() as patch:
        patch.setattr(llm, "VERSION", MATCH)
        old = BlockCodec(model).encode_blocks(raws)
    s.write(lambda t: [t.replace_frame(k, f) for k, f in zip(keys, old)])
    s.close()
    return keys, raws, old


def tables(engine, tokens: torch.Tensor, chunk: int) -> torch.Tensor:
    """The engine's logits for *tokens* [B, T], fed *chunk* tokens per step."""
    cache = KVCache()
    return torch.cat([engine.step(tokens[:, i:i + chunk], cache)
                      for i in range(0, tokens.shape[1], chunk)], 1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with *n* torch threads, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at *path* (for disk-full tests), unmounted afterwards;
    skips the test where mounting is not allowed."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def processes(marker: bytes, pids: list[int] | None = None) -> list[int]:
    """The processes (of *pids*, default all) whose command line holds *marker*."""
    out = []
    for pid in pids if pids is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmd:
            out.append(int(pid))
    return out


def x86_like(n_calls: int, seed: int = 3) -> bytes:
    """Machine-code-like bytes: short random runs, each ending in a call
    (E8 rel32) to one of a few functions; the relative offsets all differ,
    so only the x86 branch converter makes the calls repeat."""
    rng = random.Random(seed)
    ops = [bytes(rng.randrange(256) for _ in range(rng.randint(3, 9))) for _ in range(40)]
    targets = [rng.randrange(1 << 20) for _ in range(6)]
    out = bytearray()
    for _ in range(n_calls):
        out += rng.choice(ops)
        rel = (rng.choice(targets) - (len(out) + 5)) & 0xFFFFFFFF
        out += b"\xe8" + rel.to_bytes(4, "little")
    return bytes(out)

