"""llm blocks on a mount: re-encoded offline, read back through batched decoding."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from llmfs.codec.frame import Codec
from llmfs.codec.plain import frame_codec
from llmfs.codec.policy import BlockCodec
from llmfs.compactor import recompress
from llmfs.store import Store

from conftest import Mounted
from test_compactor import wait_for

SAMPLE = (Path(__file__).resolve().parent.parent / "llmfs" / "samples" / "GPL-3.txt").read_bytes()


def test_llm_blocks_read_back_with_readahead(tmp_path, model):
    m = Mounted(tmp_path, options="readahead_blocks=4")
    m.mkfs("--block-size", "4096")
    m.start()
    data = SAMPLE[:40_000]
    m.path("gpl.txt").write_bytes(data)
    m.path("random").write_bytes(os.urandom(8192))
    m.stop()

    s = Store(m.store)
    keys = s.read(lambda t: list(t.stored_blocks()))
    stats = recompress(s, BlockCodec(model), keys)
    codecs = s.read(lambda t: [frame_codec(t.frame(k)) for k in t.stored_blocks()])
    s.close()
    assert stats["llm"] >= 8 and stats["verify_failures"] == 0
    assert codecs.count(Codec.LLM) == stats["llm"]   # random data stayed raw

    m.start()
    try:
        got = []

        def reader() -> None:                           # sequential 4 KiB reads, cold
            with open(m.path("gpl.txt"), "rb") as f:
                got.append(b"".join(iter(lambda: f.read(4096), b"")))

        t = threading.Thread(target=reader)
        t.start()
        waits = []
        while t.is_alive():                             # the model must not stall others
            t0 = time.perf_counter()
            assert m.path("random").stat().st_size == 8192
            assert len(m.path("random").read_bytes()) == 8192
            os.listdir(m.mnt)
            waits.append(time.perf_counter() - t0)
            time.sleep(0.05)
        t.join()
        assert got == [data]
        assert len(waits) >= 5 and max(waits) < 0.5, waits
        live = json.loads(os.getxattr(m.mnt, "user.llmfs.stats"))
        assert live["readahead_blocks"] > 0
        assert live["llm_batches"] < live["llm_blocks_decoded"]   # decoded in batches
        assert m.path("gpl.txt").read_bytes() == data             # now from the cache
        again = json.loads(os.getxattr(m.mnt, "user.llmfs.stats"))
        assert again["llm_blocks_decoded"] == live["llm_blocks_decoded"]
        with open(m.path("gpl.txt"), "r+b") as f:                 # overwrite inside an llm block
            f.seek(5000)
            f.write(b"EDIT")
        assert m.path("gpl.txt").read_bytes() == data[:5000] + b"EDIT" + data[5004:]
    finally:
        m.stop()


def model_workers(pid: int) -> list[int]:
    """The model worker processes (multiprocessing spawns) of process *pid*."""
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    workers = []
    for k in kids:
        try:
            if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes():
                workers.append(k)
        except OSError:
            continue
    return workers


def test_the_model_worker_starts_at_mount(tmp_path):
    """decode_prestart (default): the decode worker is up before any read, so a
    cold read does not wait for it; off, none starts until a read needs one."""
    for options, want in (("compact=false", 1), ("compact=false,decode_prestart=false", 0)):
        (tmp_path / str(want)).mkdir()
        m = Mounted(tmp_path / str(want), options=options)
        m.mkfs()
        m.start()
        try:
            wait_for(lambda: len(model_workers(m.proc.pid)) >= want, 30)
            time.sleep(1.0)
            assert len(model_workers(m.proc.pid)) == want, options
        finally:
            m.stop()


def test_model_workers_end_with_a_killed_daemon(tmp_path, model):
    """kill -9 of the daemon while its worker decodes cannot stop the worker:
    it notices its parent is gone and exits, instead of holding a model for
    good (before, each kill left one behind)."""
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs("--block-size", "4096")
    m.start()
    m.path("gpl.txt").write_bytes(SAMPLE[:40_000])
    m.stop()
    s = Store(m.store)
    assert recompress(s, BlockCodec(model), s.read(lambda t: list(t.stored_blocks())))["llm"]
    s.close()
    m.start()
    try:
        wait_for(lambda: model_workers(m.proc.pid), 30)
        workers = model_workers(m.proc.pid)
        reader = subprocess.Popen([sys.executable, "-c",
                                   f"open({str(m.path('gpl.txt'))!r}, 'rb').read()"])
        time.sleep(0.5)                      # the worker is decoding now
        m.kill()
        reader.kill()
        reader.wait()
        wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 10)
    finally:
        m.stop()
