"""Store dictionaries: trained on a store's small blocks when they pay, used
by fresh writes and the compactor's zstd fallback, named by every frame that
needs one, and read back by any process that opens the store (export too)."""
from __future__ import annotations

import os
import random
import subprocess
import sys

from llmfs.codec.frame import Codec, Frame
from llmfs.codec.plain import decode_plain, fast_frame
from llmfs.dictionaries import MIN_SAMPLES, train
from llmfs.stats import collect
from llmfs.store import Store

from conftest import Mounted
from test_compactor import fsck_clean, live, wait_for

WORDS = [w.encode() for w in "alpha beta gamma delta struct union define include static const "
         "unsigned long int char void return sizeof offset length buffer".split()]
BOILER = (b"/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */\n"
          b"/*\n * This header is part of an archive of small similar files.\n"
          b" * Every one of them starts the same way and shares its idioms.\n */\n"
          b"#ifndef _SMALL_FILE_H\n#define _SMALL_FILE_H\n\n#include <linux/types.h>\n\n")


def small_file(seed: int) -> bytes:
    """A small header-like file: shared boilerplate, then its own fields."""
    rng = random.Random(seed)
    body = b"".join(b"struct s%d_%d {\n\t__u32 %s_%s;\n\t__u64 %s;\n};\n" % (
        seed, i, rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS))
        for i in range(rng.randint(3, 12)))
    return BOILER + body + b"\n#endif\n"


HEADER = random.Random(0).randbytes(700)


def record(seed: int) -> bytes:
    """A small binary record the model cannot code (bytes of no text), whose
    first 700 bytes all records share: only a dictionary sees that."""
    rng = random.Random(seed)
    return HEADER + bytes(0x80 + rng.randrange(16) for _ in range(rng.randint(600, 1200)))


def backlog(store) -> int:
    """Loose frames the compactor has not finished with (as llmfs stats --watch counts)."""
    s = Store(store, readonly=True)
    try:
        return s.read(lambda t: t.backlog())
    finally:
        s.close()


def test_a_dictionary_is_trained_only_when_it_pays():
    files = [small_file(i) for i in range(200)]
    d = train(files)
    assert d is not None and len(d) <= 32 << 10
    assert train(files[:MIN_SAMPLES - 1]) is None                  # too few samples
    assert train([os.urandom(1500) for _ in range(200)]) is None   # nothing shared


def test_fresh_writes_and_compaction_use_the_store_dictionary_on_a_mount(tmp_path):
    m = Mounted(tmp_path, options="compact_after_s=0,compact_interval_s=0.1,compact_batch=32,"
                                  "compact_yield_s=0,compact_cpu_share=1,learn=false")
    m.mkfs()
    files = {f"r{i}": record(i) for i in range(100)}
    m.start()
    try:
        for name, data in files.items():
            m.path(name).write_bytes(data)
        wait_for(lambda: live(m).get("dictionaries", 0) >= 1)
        assert live(m)["compact_dictionary_blocks"] >= MIN_SAMPLES   # the sample, coded again
        later = {f"new{i}": record(1000 + i) for i in range(10)}
        for name, data in later.items():                        # fresh writes use it now
            m.path(name).write_bytes(data)
        files.update(later)
        wait_for(lambda: backlog(m.store) == 0)                 # the compactor is done
        assert all(m.path(n).read_bytes() == d for n, d in files.items())
    finally:
        m.stop()
    s = Store(m.store, readonly=True)
    st = collect(s)
    heads = s.read(lambda t: [h for _, h, _ in t.frame_index()])
    s.close()
    assert st.dictionary in st.dictionaries and st.space["dictionaries"] > 0
    zdict = [h for h in heads if h.codec == Codec.ZDICT and h.model.hex() == st.dictionary]
    # every block is zdict (fresh writes too) but for the few where the model beat zstd
    # before there was a dictionary (llm frames are final)
    assert len(heads) == 110 and len(zdict) >= 90
    assert all(h.codec == Codec.LLM for h in heads if h not in zdict), [h for h in heads if h not in zdict]
    assert st.stored_bytes < sum(map(len, files.values())) - 110 * 600
    r = subprocess.run([sys.executable, "-m", "llmfs.cli", "fsck", str(m.store), "--scrub"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"                       # a new process: the dictionary from the store
    r = subprocess.run([sys.executable, "-m", "llmfs.cli", "export", str(m.store), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    fsck_clean(m.store)


def test_a_frame_whose_dictionary_is_missing_is_a_clear_error(tmp_path):
    s = Store.create(tmp_path / "a", 4096, {})
    did = s.add_dictionary(train([small_file(i) for i in range(100)]))
    raw = small_file(7)
    frame = fast_frame(raw, 1, did)
    assert Frame.unpack(frame).codec == Codec.ZDICT and decode_plain(frame) == raw
    assert len(frame) < len(fast_frame(raw, 1))
    s.close()
    other = Frame.unpack(frame)
    lost = Frame(other.codec, other.raw_len, other.digest, other.payload, b"\x01" * 8).pack()
    err = decode_plain(lost)
    assert isinstance(err, Exception) and "unknown dictionary 0101010101010101" in str(err)
