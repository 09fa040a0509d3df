"""Compaction on a Ray cluster (a local Ray instance of two CPUs): frames
byte-identical to local ones, a worker killed mid-batch loses nothing, a
worker returning a frame that does not decode has its results dropped, and
without Ray the flag says what to install."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmfs.codec.frame import Codec, Frame
from llmfs.codec.policy import BlockCodec
from llmfs.store import Store

from conftest import PROSE, Mounted, processes

ray = pytest.importorskip("ray")

SAMPLE = (Path(__file__).resolve().parent.parent / "llmfs" / "samples" / "GPL-3.txt").read_bytes()
BLOCKS = [SAMPLE[i:i + 4096] for i in range(0, 8 * 4096, 4096)]


def llmfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmfs.cli", *args], capture_output=True,
                          text=True)


def without_ray(*args: str) -> subprocess.CompletedProcess:
    """``llmfs(*args)`` in a process where ``import ray`` fails, as on a
    machine without the cluster extra."""
    code = ("import sys; sys.modules['ray'] = None; from llmfs.cli import main; "
            f"main({list(args)!r})")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.fixture(scope="module")
def cluster():
    from llmfs.cluster import connect

    connect("local:2")
    yield
    ray.shutdown()


@pytest.fixture()
def cluster_codec(cluster, model):
    from llmfs.cluster import ClusterCodec

    with ClusterCodec(BlockCodec(model), [model.data], 1, "local:2", task_blocks=2) as c:
        yield c


def test_frames_encoded_on_the_cluster_are_byte_identical_to_local_ones(cluster_codec, model):
    local = BlockCodec(model).encode_blocks(BLOCKS)
    remote = cluster_codec.encode_blocks(BLOCKS)
    assert remote == local
    assert sum(Frame.unpack(f).codec == Codec.LLM for f in remote) >= 6
    assert cluster_codec.counters["cluster_verified_llm"] >= 6


def test_a_worker_killed_mid_batch_loses_nothing(cluster_codec, model):
    killed: list[int] = []

    def killer() -> None:
        end = time.time() + 60
        while not killed and time.time() < end:
            for pid in processes(b"ray::encode_task"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    remote = cluster_codec.encode_blocks(BLOCKS)
    t.join()
    assert killed, "no encoding worker was seen to kill"
    assert remote == BlockCodec(model).encode_blocks(BLOCKS)    # Ray ran the task again


def test_a_frame_that_does_not_decode_drops_its_workers_results(cluster_codec, caplog):
    def liar_task(models, encoders, device, blocks, dictionary, policy):
        """A worker that flips a bit in the payload of its first frame (defined
        here: the workers cannot import the test module, so Ray ships it by value)."""
        from llmfs.cluster import encode_task

        who, frames = encode_task(models, encoders, device, blocks, dictionary, policy)
        bad = bytearray(frames[0])
        bad[-1] ^= 1
        return who, [bytes(bad)] + frames[1:]

    cluster_codec._task = ray.remote(num_cpus=1)(liar_task)
    with caplog.at_level("ERROR", logger="llmfs.cluster"):
        out = cluster_codec.encode_blocks(BLOCKS)
    assert out == [None] * len(BLOCKS)                        # every task lied once
    assert cluster_codec.counters["cluster_refused_blocks"] == len(BLOCKS)
    assert "does not decode to the block" in caplog.text


def test_compact_through_the_cluster_and_without_ray(tmp_path):
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs("--block-size", "4096")
    m.start()
    try:
        m.path("gpl").write_bytes(SAMPLE[:6 * 4096])
        m.path("prose").write_bytes(PROSE * 3)
    finally:
        m.stop()
    twin = tmp_path / "twin"
    shutil.copytree(m.store, twin)
    assert llmfs("compact", str(m.store)).returncode == 0
    r = llmfs("compact", str(twin), "--cluster", "local:2")
    assert r.returncode == 0, r.stderr
    frames = []
    for path in (m.store, twin):
        s = Store(path, readonly=True)
        frames.append(s.read(lambda t: sorted(t.all_frames())))
        s.close()
    assert frames[0] == frames[1] and len(frames[0]) == 7         # the same bytes, packed
    r = without_ray("compact", str(twin), "--cluster", "local:2")
    assert r.returncode == 1 and "pip install 'llmfs[cluster]'" in r.stderr, r.stderr


@pytest.mark.slow     # a Ray start per test: make test stays under 15 minutes
def test_the_daemon_compacts_on_the_cluster_and_refuses_to_mount_without_ray(tmp_path):
    m = Mounted(tmp_path, options="compact_after_s=0,compact_interval_s=0.2,compact_batch=8,"
                                  "compact_yield_s=0,learn=false,compact_cluster=local:1")
    m.mkfs("--block-size", "4096")
    m.start()
    try:
        m.path("gpl").write_bytes(SAMPLE[:6 * 4096])
        end = time.time() + 120
        while json.loads(os.getxattr(m.mnt, "user.llmfs.stats")).get("compact_llm", 0) < 4:
            assert time.time() < end, "the daemon's cluster compaction never finished"
            time.sleep(0.5)
        assert m.path("gpl").read_bytes() == SAMPLE[:6 * 4096]
    finally:
        m.stop()
    r = without_ray("mount", str(m.store), str(m.mnt), "-o", "compact_cluster=local:1")
    assert r.returncode == 1 and "pip install 'llmfs[cluster]'" in r.stderr, r.stderr


@pytest.mark.slow     # a Ray start per test: make test stays under 15 minutes
def test_cancelling_a_cluster_compaction_leaves_the_store_consistent(tmp_path):
    data = (SAMPLE * 8)[:64 * 4096]
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs("--block-size", "4096")
    m.start()
    try:
        m.path("gpl").write_bytes(data)
    finally:
        m.stop()

    def llm_frames() -> int:
        s = Store(m.store, readonly=True)
        try:
            return s.read(lambda t: sum(h is not None and h.codec == Codec.LLM
                                        for _, h, _ in t.frame_index()))
        finally:
            s.close()

    p = subprocess.Popen([sys.executable, "-m", "llmfs.cli", "compact", str(m.store),
                          "--cluster", "local:2", "--batch", "8"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while llm_frames() == 0:                                # the first batch is swapped in
        assert time.time() < end and p.poll() is None
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)                           # Ctrl-C with more batches out
    p.communicate(timeout=120)
    assert p.returncode != 0 and 0 < llm_frames() < 64      # stopped part of the way
    r = llmfs("fsck", str(m.store), "--scrub")
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
    m.start()
    try:
        assert m.path("gpl").read_bytes() == data
    finally:
        m.stop()
