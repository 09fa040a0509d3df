"""The compactor inside a running daemon: cold blocks become llm frames,
reads stay exact, and writes racing the compactor are never lost."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llmfs.codec.frame import Codec
from llmfs.codec.plain import frame_codec
from llmfs.store import Store

from conftest import Mounted

SAMPLE = (Path(__file__).resolve().parent.parent / "llmfs" / "samples" / "GPL-3.txt").read_bytes()
FAST = "compact_after_s=0,compact_interval_s=0.2,compact_batch=4"


def live(m: Mounted) -> dict:
    return json.loads(os.getxattr(m.mnt, "user.llmfs.stats"))


def wait_for(cond, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not cond():
        assert time.time() < end, "timed out"
        time.sleep(0.2)


def test_daemon_compacts_cold_blocks_and_keeps_racing_writes(tmp_path):
    m = Mounted(tmp_path, options=FAST)
    m.mkfs("--block-size", "4096")
    m.start()
    try:
        m.path("gpl").write_bytes(SAMPLE[:24_000])
        wait_for(lambda: live(m).get("compact_llm", 0) >= 4)
        assert m.path("gpl").read_bytes() == SAMPLE[:24_000]
        # overwrite while the compactor works on the older versions
        last = b""
        for i in range(6):
            last = SAMPLE[i * 1000:i * 1000 + 24_000]
            m.path("racing").write_bytes(last)
            time.sleep(0.3)
        wait_for(lambda: live(m).get("compact_rounds", 0) >= 3)
        assert m.path("racing").read_bytes() == last
    finally:
        m.stop()
    s = Store(m.store)
    codecs = s.read(lambda t: [frame_codec(f) for _, f in t.scan("blocks")])
    cursor = s.read(lambda t: t.meta("compact_cursor"))
    s.close()
    assert codecs.count(Codec.LLM) >= 4 and cursor is not None
    m.start()
    try:
        assert m.path("racing").read_bytes() == last
        assert m.path("gpl").read_bytes() == SAMPLE[:24_000]
    finally:
        m.stop()
