"""The training-corpus builder: de-duplication, caps, split, manifest and refusals."""
from __future__ import annotations

import json

import pytest

from llmfs.training import corpus
from llmfs.training.corpus import Source, _glob, _raw


def _source(root, name="docs", cap=10_000) -> Source:
    return Source(name, f"{name}-pkg", "MIT", _glob(str(root), "*.txt"), _raw, cap)


def test_build_dedups_caps_splits_and_records_sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"{i:02}.txt").write_bytes(f"document {i} ".encode() * 20)
    (src / "50.txt").write_bytes((src / "07.txt").read_bytes())   # duplicate content
    (src / "51.txt").write_bytes(b"  \n")                            # blank
    big = tmp_path / "big"
    big.mkdir()
    (big / "a.txt").write_bytes(b"x" * 5_000)
    (big / "b.txt").write_bytes(b"y" * 5_000)
    sources = [_source(src, cap=100_000), _source(big, "big", cap=7_000)]
    m = corpus.build(tmp_path / "out", heldout_fraction=0.1, sources=sources)
    docs_src, capped = m["sources"]
    assert docs_src["duplicates_dropped"] == 2 and docs_src["files"] == 50
    assert capped["bytes"] == 7_000 and capped["files"] == 2 and capped["licence"] == "MIT"
    train = (tmp_path / "out/train.txt").read_bytes()
    held = (tmp_path / "out/heldout.txt").read_bytes()
    docs = train.split(b"\n\x00\n") + held.split(b"\n\x00\n")
    assert len(docs) == 52 and len(held.split(b"\n\x00\n")) == 5
    assert sum(map(len, docs)) == docs_src["bytes"] + 7_000
    assert json.loads((tmp_path / "out/MANIFEST.json").read_text()) == m
    assert m == corpus.build(tmp_path / "again", heldout_fraction=0.1, sources=sources)   # deterministic


def test_build_refuses_benchmark_files_and_names_missing_packages(tmp_path):
    bench = tmp_path / "shared" / "corpus"
    bench.mkdir(parents=True)
    (bench / "dickens.txt").write_bytes(b"benchmark text")
    with pytest.raises(RuntimeError, match="refusing benchmark file"):
        corpus.build(tmp_path / "out", sources=[_source(bench)])
    with pytest.raises(RuntimeError, match="install handbook-pkg"):
        corpus.build(tmp_path / "out", sources=[_source(tmp_path / "absent", name="handbook")])
