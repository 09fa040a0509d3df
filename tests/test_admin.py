"""Admin commands on real stores: stats equals what the store holds; compact
re-encodes with the model and the data reads back unchanged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmfs.codec.frame import Codec, Frame
from llmfs.store import Store

from conftest import Mounted, recode_as_match_frames

SAMPLE = (Path(__file__).resolve().parent.parent / "llmfs" / "samples" / "GPL-3.txt").read_bytes()


def llmfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmfs.cli", *args], capture_output=True,
                          text=True)


def test_stats_equal_store_contents_and_compact(tmp_path):
    m = Mounted(tmp_path)
    m.mkfs("--block-size", "4096")
    m.start()
    m.path("gpl").write_bytes(SAMPLE[:20_000])
    m.path("copy").write_bytes(SAMPLE[:20_000])          # deduplicated
    with open(m.path("sparse"), "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    os.mkdir(m.path("dir"))
    r = llmfs("compact", str(m.store))
    assert r.returncode == 1 and "in use by another llmfs process" in r.stderr
    live = json.loads(llmfs("stats", "--json", str(m.mnt)).stdout)["live"]
    assert live["open_files"] == 0
    m.stop()

    def check() -> dict:
        r = llmfs("stats", "--json", str(m.store))
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        s = Store(m.store, readonly=True)
        frames = s.read(lambda t: [Frame.unpack(f) for _, f in t.all_frames()])
        sizes = s.read(lambda t: sum(len(f) for _, f in t.all_frames()))
        s.close()
        assert st["files"] == 3 and st["directories"] == 2
        assert st["logical_bytes"] == 2 * 20_000 + (1 << 20) + 3
        assert st["stored_bytes"] == sizes
        assert st["unique_bytes"] == sum(f.raw_len for f in frames) == 20_000 + 3
        assert st["dedup_saved_bytes"] == 20_000
        for c in Codec:
            row = st["codecs"][c.name.lower()]
            assert row["blocks"] == sum(f.codec == c for f in frames)
        return st

    before = check()
    assert before["codecs"]["llm"]["blocks"] == 0
    r = llmfs("compact", str(m.store), "--workers", "1")
    assert r.returncode == 0, r.stderr
    after = check()
    assert after["codecs"]["llm"]["blocks"] >= 4
    assert after["stored_bytes"] < before["stored_bytes"]
    assert after["models"] == {k: after["codecs"]["llm"]["blocks"] for k in after["models"]}
    m.start()
    assert m.path("gpl").read_bytes() == SAMPLE[:20_000] == m.path("copy").read_bytes()
    m.stop()


def test_every_store_command_takes_config_and_rejects_a_bad_one(tmp_path):
    """One --config for all commands (as a systemd unit passes it); a bad key or
    value is named in the error and nothing runs."""
    store, src, dst = tmp_path / "s", tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a").write_bytes(SAMPLE[:5000])
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("cache_mib = 64\n")
    bad.write_text("cache_mib = 'lots'\n")
    runs = [("mkfs", str(store)), ("import", str(src), str(store)), ("stats", str(store)),
            ("fsck", str(store)), ("compact", str(store), "--limit", "1"),
            ("export", str(store), str(dst))]
    for args in runs:
        r = llmfs(*args, "--config", str(bad))
        assert r.returncode != 0 and "cache_mib" in r.stderr, (args, r.stderr)
        r = llmfs(*args, "--config", str(good))
        assert r.returncode == 0, (args, r.stderr)
    assert (dst / "a").read_bytes() == SAMPLE[:5000]


def test_compact_does_not_retry_blocks_the_models_cannot_shrink(tmp_path):
    """Blocks no encoding model shrank are marked and skipped on the next walk
    (offline and in the daemon's cold_blocks) until the models change."""
    import random

    from llmfs.codec.policy import encoder_tag
    from llmfs.compactor import cold_blocks
    from llmfs.model import model_id

    store, src = tmp_path / "s", tmp_path / "src"
    src.mkdir()
    rng = random.Random(5)   # 16 symbols at random: zstd codes 4 bits each, the model cannot
    (src / "noise").write_bytes(bytes(rng.choice(b"0123456789abcdef") for _ in range(32768)))
    assert llmfs("mkfs", str(store), "--block-size", "16384").returncode == 0
    assert llmfs("import", str(src), str(store)).returncode == 0
    first = llmfs("compact", str(store))
    assert first.returncode == 0 and "tried 2 zstd/LZMA/PPMd/ZPAQ blocks" in first.stdout, \
        first.stdout
    assert "0 now llm" in first.stdout
    again = llmfs("compact", str(store))
    assert "tried 0 zstd/LZMA/PPMd/ZPAQ blocks" in again.stdout and "2 skipped" in again.stdout, again.stdout
    forced = llmfs("compact", str(store), "--retry")
    assert "tried 2 zstd/LZMA/PPMd/ZPAQ blocks" in forced.stdout, forced.stdout
    s = Store(store, readonly=True)
    files, n = s.read(lambda t: t.codec_models())
    tag = encoder_tag([model_id(d)[:8] for d in files[:n]])
    assert s.read(lambda t: cold_blocks(t, b"", 10, 1 << 62, tag))[0] == []
    assert len(s.read(lambda t: cold_blocks(t, b"", 10, 1 << 62, b"other model"))[0]) == 2
    s.close()


def test_compact_zpaq_setting_decides_whether_zpaq_is_tried(tmp_path):
    """Binary records the model does not win: ZPAQ by default, LZMA/PPMd/zstd
    with compact_zpaq = false; both read back the same bytes."""
    records = (Path(__file__).parent / "data" / "records.bin").read_bytes()
    off = tmp_path / "off.toml"
    off.write_text("compact_zpaq = false\n")
    for name, extra, want in (("on", (), {Codec.ZPAQ}), ("off", ("--config", str(off)), None)):
        store, src, dst = tmp_path / name, tmp_path / f"src-{name}", tmp_path / f"dst-{name}"
        src.mkdir()
        (src / "records").write_bytes(records)
        assert llmfs("mkfs", str(store)).returncode == 0
        assert llmfs("import", str(src), str(store)).returncode == 0
        r = llmfs("compact", str(store), *extra)
        assert r.returncode == 0, r.stderr
        s = Store(store, readonly=True)
        codecs = s.read(lambda t: {Frame.unpack(f).codec for _, f in t.all_frames()})
        s.close()
        assert codecs == want if want else Codec.ZPAQ not in codecs and codecs, codecs
        assert llmfs("export", str(store), str(dst)).returncode == 0
        assert (dst / "records").read_bytes() == records


def test_compact_upgrade_recodes_llm_blocks_of_an_older_format(tmp_path, model, monkeypatch):
    """llm blocks an llmfs before frame version 4 wrote (match model only) are
    left alone by compact, and coded again, smaller, by compact --upgrade;
    the data reads back and a second --upgrade has nothing to do."""
    from llmfs.codec.frame import MATCH, NGRAMS
    from llmfs.codec.policy import BlockCodec

    store, src = tmp_path / "s", tmp_path / "src"
    src.mkdir()
    (src / "gpl").write_bytes(SAMPLE[:32768])
    assert llmfs("mkfs", str(store), "--block-size", "16384").returncode == 0
    assert llmfs("import", str(src), str(store)).returncode == 0
    keys, raws, old = recode_as_match_frames(store, model, monkeypatch)
    assert [(Frame.unpack(f).codec, Frame.unpack(f).version) for f in old] == [(Codec.LLM, MATCH)] * 2

    plain = llmfs("compact", str(store))
    assert plain.returncode == 0 and "tried 0 zstd/LZMA/PPMd/ZPAQ blocks" in plain.stdout, plain.stdout
    up = llmfs("compact", str(store), "--upgrade", "--workers", "1")
    assert "tried 2 zstd/LZMA/PPMd/ZPAQ and older llm blocks" in up.stdout, up.stdout + up.stderr
    assert "2 llm re-coded smaller" in up.stdout, up.stdout
    s = Store(store, readonly=True)
    new = s.read(lambda t: [t.frame(k) for k in keys])
    s.close()
    assert [Frame.unpack(f).version for f in new] == [NGRAMS] * 2
    assert sum(map(len, new)) < sum(map(len, old))
    assert BlockCodec(model).decode_blocks(new) == raws
    again = llmfs("compact", str(store), "--upgrade")
    assert "tried 0 zstd/LZMA/PPMd/ZPAQ and older llm blocks" in again.stdout, again.stdout


@pytest.mark.slow     # make test stays under 15 minutes
def test_compact_upgrade_recodes_llm_blocks_of_a_model_no_longer_preferred(tmp_path, model):
    """When a better model comes first among the encoders (store learning, or
    llmfs train), --upgrade tries it on llm blocks another model coded: each
    keeps the smaller verified frame, is marked, and is not tried again."""
    from llmfs.codec.policy import BlockCodec
    from llmfs.model import MODELS_DIR, read_model_file

    store, src = tmp_path / "s", tmp_path / "src"
    src.mkdir()
    (src / "gpl").write_bytes(SAMPLE[:32768])
    assert llmfs("mkfs", str(store), "--block-size", "16384").returncode == 0
    assert llmfs("import", str(src), str(store)).returncode == 0
    assert "2 now llm" in llmfs("compact", str(store), "--workers", "1").stdout
    other = read_model_file(MODELS_DIR / "technical" / "model.safetensors")
    s = Store(store)
    keys = s.read(lambda t: [k for k, _ in t.all_frames()])
    before = s.read(lambda t: [t.frame(k) for k in keys])
    short = Frame.unpack(before[0]).model

    def prefer_other(t) -> bytes:
        from llmfs.model import model_id
        t.put_model(model_id(other)[:8], other)
        t.set_encode_models([model_id(other)[:8], short])
        return model_id(other)[:8]
    first = s.write(prefer_other)
    s.close()
    up = llmfs("compact", str(store), "--upgrade", "--workers", "1")
    assert "tried 2 zstd/LZMA/PPMd/ZPAQ and older llm blocks" in up.stdout, up.stdout + up.stderr
    s = Store(store, readonly=True)
    after = s.read(lambda t: [t.frame(k) for k in keys])
    s.close()
    for old, new in zip(before, after):     # the smaller of the two models' frames
        assert len(new) <= len(old)
        assert Frame.unpack(new).model in (first, short)
    assert BlockCodec(model).decode_blocks(before) == \
        BlockCodec.from_model_files([other, model.data]).decode_blocks(after)
    again = llmfs("compact", str(store), "--upgrade")
    assert "tried 0 zstd/LZMA/PPMd/ZPAQ and older llm blocks" in again.stdout, again.stdout


def test_stats_of_paths_in_a_mount_count_shared_blocks_once_and_watch_streams(tmp_path):
    m = Mounted(tmp_path, options="compact=false")
    m.mkfs("--block-size", "4096")
    m.start()
    try:
        os.makedirs(m.path("a", "sub"))
        m.path("a", "one").write_bytes(SAMPLE[:10_000])             # 3 blocks
        m.path("a", "sub", "two").write_bytes(SAMPLE[:8192])        # the same 2 blocks
        m.path("b").write_bytes(os.urandom(5000))                   # 2 raw blocks
        os.sync()
        got = json.loads(llmfs("stats", "--json", str(m.path("a"))).stdout)
        assert (got["files"], got["directories"], got["blocks"], got["unique_blocks"]) == \
            (2, 2, 5, 3)
        assert got["logical_bytes"] == 18_192 and got["codecs"]["zstd"]["blocks"] == 3
        both = json.loads(llmfs("stats", "--json", str(m.path("a", "one")), str(m.path("b")),
                                str(m.path("a"))).stdout)
        assert (both["files"], both["unique_blocks"]) == (3, 5)
        assert both["codecs"]["raw"]["stored"] > 5000 and both["stored_bytes"] == sum(
            c["stored"] for c in both["codecs"].values())
        text = llmfs("stats", str(m.path("b")))
        assert text.returncode == 0 and "1 files" in text.stdout and "raw" in text.stdout
        r = llmfs("stats", str(tmp_path))                            # not in a mount
        assert r.returncode == 1 and "not in an llmfs mount" in r.stderr
        watch = subprocess.Popen([sys.executable, "-m", "llmfs.cli", "stats", "--watch",
                                  "--interval", "0.2", str(m.mnt)], stdout=subprocess.PIPE,
                                 text=True)
        try:
            lines = [json.loads(watch.stdout.readline()) for _ in range(3)]
        finally:
            watch.kill()
            watch.wait()
        assert all(d["open_files"] == 0 and d["compact_backlog"] == 5 for d in lines)
    finally:
        m.stop()
