"""llmfs compress / decompress: round trips and clear errors with non-zero exits."""
import os
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import PROSE, TEXT
from llmfs.cli import main

DATA = TEXT * 300 + os.urandom(5000) + bytes(9000) + TEXT * 50


@pytest.fixture()
def run():
    runner = CliRunner()

    def _run(*args, input=None):
        if args[0] in ("compress", "decompress") and "--workers" not in args:
            args = (*args, "--workers", "1")
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)
    return _run


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    src = tmp_path_factory.mktemp("packed") / "data.bin"
    src.write_bytes(DATA)
    r = CliRunner().invoke(main, ["compress", str(src), "--block-size", "16384", "--workers", "1"])
    assert r.exit_code == 0, r.output
    return src, src.with_name("data.bin.llmz")


def test_round_trip_file(packed, run, tmp_path):
    src, llmz = packed
    assert llmz.stat().st_size < len(DATA) / 2
    out = tmp_path / "back.bin"
    r = run("decompress", str(llmz), "-o", str(out), "-f")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == DATA


def test_round_trip_stdin_stdout_two_workers(tmp_path):
    """Through real pipes and the console script, with two worker processes."""
    cmd = [sys.executable, "-m", "llmfs.cli"]
    data = DATA[:40000]
    z = subprocess.run(cmd + ["compress", "-", "--block-size", "8192", "--workers", "2"],
                       input=data, capture_output=True, check=True)
    assert b"blocks llm" in z.stderr and len(z.stdout) < len(data) / 2
    back = subprocess.run(cmd + ["decompress", "-", "--workers", "1"], input=z.stdout,
                          capture_output=True, check=True)
    assert back.stdout == data


@pytest.mark.parametrize("content", [b"", b"x", TEXT])
def test_small_inputs(tmp_path, run, content):
    src = tmp_path / "s"
    src.write_bytes(content)
    assert run("compress", str(src)).exit_code == 0
    assert run("decompress", str(tmp_path / "s.llmz"), "-o", str(tmp_path / "o")).exit_code == 0
    assert (tmp_path / "o").read_bytes() == content


def test_refuses_to_overwrite(packed, run, tmp_path):
    src, llmz = packed
    before = llmz.read_bytes()
    r = run("compress", str(src), "--block-size", "16384")
    assert r.exit_code == 1 and "already exists" in r.output
    assert llmz.read_bytes() == before


def test_missing_file(run, tmp_path):
    r = run("compress", str(tmp_path / "nope"))
    assert r.exit_code == 1 and "No such file" in r.output
    r = run("decompress", str(tmp_path / "nope.llmz"))
    assert r.exit_code == 1 and "No such file" in r.output


def test_not_llmz(run, tmp_path):
    p = tmp_path / "plain.llmz"
    p.write_bytes(b"hello world, not compressed")
    r = run("decompress", str(p), "-o", str(tmp_path / "o"))
    assert r.exit_code == 1 and "not an llmz file" in r.output
    assert not (tmp_path / "o").exists()


def test_truncated(packed, run, tmp_path):
    _, llmz = packed
    data = llmz.read_bytes()
    for cut in (10, 50, len(data) // 2, len(data) - 1):
        p = tmp_path / "cut.llmz"
        p.write_bytes(data[:cut])
        r = run("decompress", str(p), "-o", str(tmp_path / "o"))
        assert r.exit_code == 1 and "truncated" in r.output, (cut, r.output)
        assert not (tmp_path / "o").exists()  # no half-written output


def test_corrupted(packed, run, tmp_path):
    _, llmz = packed
    data = bytearray(llmz.read_bytes())
    data[len(data) // 2] ^= 0x10
    p = tmp_path / "bad.llmz"
    p.write_bytes(bytes(data))
    r = run("decompress", str(p), "-o", str(tmp_path / "o"))
    assert r.exit_code == 1 and "corrupted" in r.output


def test_unknown_model(packed, run, tmp_path):
    _, llmz = packed
    data = bytearray(llmz.read_bytes())
    import xxhash
    data[9:41] = b"\xab" * 32  # another model's id, header checksum made valid
    data[41:45] = struct.pack("<I", xxhash.xxh32_intdigest(bytes(data[:41])))
    p = tmp_path / "other.llmz"
    p.write_bytes(bytes(data))
    r = run("decompress", str(p), "-o", str(tmp_path / "o"))
    assert r.exit_code == 1 and "unknown model id " + "ab" * 32 in r.output


@pytest.mark.parametrize("retired", ["starter", "technical"])
def test_container_of_a_retired_shipped_model_decodes(run, tmp_path, retired):
    """A default that was replaced stays shipped: what it wrote decodes without --model."""
    from llmfs.model import DEFAULT_MODEL, MODELS_DIR, SHIPPED

    path = MODELS_DIR / retired / "model.safetensors"
    rid = SHIPPED[path]
    assert path != DEFAULT_MODEL and rid != SHIPPED[DEFAULT_MODEL]
    src = tmp_path / "t.txt"
    src.write_bytes(PROSE)
    assert run("compress", str(src), "--model", str(path)).exit_code == 0
    llmz = tmp_path / "t.txt.llmz"
    assert llmz.read_bytes()[9:41] == bytes.fromhex(rid)
    r = run("decompress", str(llmz), "-o", str(tmp_path / "back"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "back").read_bytes() == PROSE


def test_unsupported_version(packed, run, tmp_path):
    _, llmz = packed
    data = bytearray(llmz.read_bytes())
    data[4] = 9
    p = tmp_path / "v9.llmz"
    p.write_bytes(bytes(data))
    r = run("decompress", str(p), "-o", str(tmp_path / "o"))
    assert r.exit_code == 1 and "unsupported llmz version 9" in r.output


@pytest.mark.parametrize("source, packed, model, current", [
    ("text.txt", "default.llmz", None, False), ("code.go", "starter.llmz", "starter", False),
    ("code.go", "match.llmz", None, False), ("code.go", "ngram.llmz", "technical", True),
    ("records.bin", "zpaq.llmz", None, False)])
def test_golden_files_of_an_earlier_engine(run, tmp_path, source, packed, model, current):
    """Files an earlier engine wrote (tests/data/README.md) decode; the *current*
    format's file is also what the same input still encodes to: no engine or
    mixing change may alter the integers.  (Files of version-2 frames decode
    with the model alone, which checks the engine's integers just as strictly.)"""
    from pathlib import Path

    from llmfs.model import MODELS_DIR

    data = Path(__file__).parent / "data"
    out = tmp_path / source
    assert run("decompress", str(data / packed), "-o", str(out)).exit_code == 0
    assert out.read_bytes() == (data / source).read_bytes()
    if not current:
        return
    extra = ("--model", str(MODELS_DIR / model / "model.safetensors")) if model else ()
    again = tmp_path / packed
    assert run("compress", str(out), "-o", str(again), *extra).exit_code == 0
    assert again.read_bytes() == (data / packed).read_bytes()
