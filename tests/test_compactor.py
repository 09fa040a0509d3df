"""The compactor inside a running daemon: cold blocks become llm frames,
reads stay exact, and writes racing the compactor are never lost."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llmfs.codec.frame import MATCH, NGRAMS, Codec, Frame
from llmfs.codec.plain import frame_codec
from llmfs.codec.policy import BlockCodec
from llmfs.compactor import cold_blocks
from llmfs.store import Store

from conftest import Mounted, recode_as_match_frames

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


def test_daemon_upgrades_llm_blocks_of_an_older_format(tmp_path, model, monkeypatch):
    """Cold llm blocks of frame version 3 are walked only with upgrade, and the
    daemon (compact_upgrade on by default) re-codes them smaller as version 4;
    the file reads back the same before and after a remount."""
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs("--block-size", "16384")
    m.start()
    try:
        m.path("gpl").write_bytes(SAMPLE[:32768])
    finally:
        m.stop()
    keys, raws, old = recode_as_match_frames(m.store, model, monkeypatch)
    assert [Frame.unpack(f).version for f in old] == [MATCH] * 2
    s = Store(m.store, readonly=True)
    assert s.read(lambda t: cold_blocks(t, b"", 10, 1 << 62, b"tag"))[0] == []
    walked = s.read(lambda t: cold_blocks(t, b"", 10, 1 << 62, b"tag", upgrade=True))[0]
    s.close()
    assert sorted(walked) == sorted(keys)

    m.options = FAST
    m.start()
    try:
        assert m.path("gpl").read_bytes() == SAMPLE[:32768]
        wait_for(lambda: live(m).get("compact_upgraded", 0) >= 2)
        assert m.path("gpl").read_bytes() == SAMPLE[:32768]
    finally:
        m.stop()
    s = Store(m.store, readonly=True)
    new = s.read(lambda t: [t.frame(k) for k in keys])
    s.close()
    assert [Frame.unpack(f).version for f in new] == [NGRAMS] * 2
    assert sum(map(len, new)) < sum(map(len, old))
    assert BlockCodec(model).decode_blocks(new) == raws
    m.start()
    try:
        assert m.path("gpl").read_bytes() == SAMPLE[:32768]
    finally:
        m.stop()
