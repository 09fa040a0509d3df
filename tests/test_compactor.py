"""The compactor inside a running daemon: cold blocks become llm frames,
reads stay exact, changes racing a round are never lost, an unmount stops a
round at once, and a restart resumes without redoing blocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from llmfs.codec.frame import MATCH, NGRAMS, Codec, Frame
from llmfs.codec.plain import frame_codec
from llmfs.codec.policy import BlockCodec
from llmfs.compactor import cold_blocks
from llmfs.store import Store
from llmfs.store.schema import ref_tried

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


def fsck_clean(store: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "llmfs.cli", "fsck", str(store)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr


def cold_store(tmp_path: Path, files: dict[str, bytes], options: str) -> Mounted:
    """A store holding *files* as fresh zstd blocks (written with compaction
    off, so every block waits for the first round), to be mounted with *options*."""
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs("--block-size", "4096")
    m.start()
    try:
        for name, data in files.items():
            m.path(name).write_bytes(data)
    finally:
        m.stop()
    m.options = options
    return m


def reads_back(m: Mounted, files: dict[str, bytes]) -> None:
    """Mount *m* and check that it holds exactly *files*."""
    m.start()
    try:
        assert sorted(os.listdir(m.mnt)) == sorted(files)
        for name, data in files.items():
            assert m.path(name).read_bytes() == data, name
    finally:
        m.stop()


def test_daemon_compacts_cold_blocks(tmp_path):
    m = Mounted(tmp_path, options=FAST)
    m.mkfs("--block-size", "4096")
    m.start()
    try:
        m.path("gpl").write_bytes(SAMPLE[:24_000])
        wait_for(lambda: live(m).get("compact_llm", 0) >= 4)
        assert m.path("gpl").read_bytes() == SAMPLE[:24_000]
    finally:
        m.stop()
    s = Store(m.store)
    codecs = s.read(lambda t: [frame_codec(f) for _, f in t.all_frames()])
    cursor = s.read(lambda t: t.meta("compact_cursor"))
    s.close()
    assert codecs.count(Codec.LLM) >= 4 and cursor is not None
    m.start()
    try:
        assert m.path("gpl").read_bytes() == SAMPLE[:24_000]
    finally:
        m.stop()


def test_compactor_racing_unlink_truncate_and_overwrite_mid_round(tmp_path):
    """compact_yield_s=0: the round runs while the files change under it; the
    blocks it was encoding are gone by its swap, which must not bring them back."""
    files = {n: SAMPLE[i * 8192:(i + 1) * 8192] for i, n in enumerate("abc")}
    m = cold_store(tmp_path, files, FAST + ",compact_batch=8,compact_yield_s=0")
    m.start()
    try:
        wait_for(lambda: live(m).get("compact_busy") == 1)
        os.unlink(m.path("a"))
        os.truncate(m.path("b"), 100)
        m.path("c").write_bytes(b"new content " * 100)
        assert live(m)["compact_busy"] == 1                # all of it inside the round
        wait_for(lambda: live(m).get("compact_rounds", 0) >= 1)
        # a's and c's blocks and b's second are gone by the swap; b's first is gone once
        # the truncated block, buffered, is flushed (before or after the swap)
        assert live(m)["compact_gone"] >= 5, live(m)
        assert sorted(os.listdir(m.mnt)) == ["b", "c"]
        assert m.path("b").read_bytes() == files["b"][:100]
        assert m.path("c").read_bytes() == b"new content " * 100
    finally:
        m.stop()
    fsck_clean(m.store)
    reads_back(m, {"b": files["b"][:100], "c": b"new content " * 100})


def test_unmount_mid_round_abandons_it_and_loses_nothing(tmp_path):
    files = {"big": SAMPLE[:32 * 4096]}
    m = cold_store(tmp_path, files, FAST + ",compact_batch=32,compact_yield_s=0")
    m.start()
    try:
        wait_for(lambda: live(m).get("compact_busy") == 1)
    finally:
        m.stop()
    assert "compactor round abandoned" in m.log.read_text()
    s = Store(m.store)
    codecs = s.read(lambda t: [frame_codec(f) for _, f in t.all_frames()])
    s.close()
    assert codecs.count(Codec.LLM) == 0                     # the round's swap never ran
    fsck_clean(m.store)
    m.options = "compact=false"
    reads_back(m, files)


def test_compaction_resumes_after_restart_without_redoing_blocks(tmp_path):
    files = {"f": SAMPLE[:8 * 4096]}
    m = cold_store(tmp_path, files,
                   FAST + ",compact_batch=2,compact_yield_s=0,compact_cpu_share=1")
    m.start()
    try:
        wait_for(lambda: live(m).get("compact_rounds", 0) >= 1)
    finally:
        m.stop()
    s = Store(m.store)
    refs = dict(s.read(lambda t: list(t.scan("refs"))))
    codecs = dict(s.read(lambda t: [(k, frame_codec(f)) for k, f in t.all_frames()]))
    done = sum(1 for k, c in codecs.items() if c == Codec.LLM or ref_tried(refs[k]))
    s.close()
    assert 2 <= done < 8
    m.start()
    try:
        wait_for(lambda: live(m).get("compact_tried", 0) >= 8 - done)
        time.sleep(1.0)                                      # more rounds would find nothing
        assert live(m)["compact_tried"] == 8 - done
        assert m.path("f").read_bytes() == files["f"]
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
