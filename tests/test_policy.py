"""encode_blocks / decode_blocks: smallest verified frame, exact round trips."""
import os
import random
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import PROSE, TEXT, x86_like
from llmfs.codec import plain, policy
from llmfs.codec.frame import Codec, Frame
from llmfs.codec.policy import BlockCodec, Policy


def codecs_of(frames):
    return [Frame.unpack(f).codec for f in frames]


def test_policy_picks_per_kind(codec):
    text = PROSE
    rand = os.urandom(3000)
    zeros = bytes(5000)
    frames = codec.encode_blocks([text, rand, zeros, b"", b"x"])
    assert codecs_of(frames) == [Codec.LLM, Codec.RAW, Codec.PPMD, Codec.RAW, Codec.RAW]
    assert len(frames[0]) < len(text) / 2.5
    assert codec.decode_blocks(frames) == [text, rand, zeros, b"", b"x"]
    assert codec.counters["probe_incompressible"] >= 1  # random data never reached the model


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.binary(max_size=600),
                          st.text(max_size=600).map(lambda s: s.encode("utf-8", "surrogatepass")),
                          st.sampled_from([TEXT, TEXT * 3, bytes(700), b"ab" * 400])),
                min_size=1, max_size=5))
def test_round_trip_any_blocks(codec, blocks):
    frames = codec.encode_blocks(blocks)
    assert codec.decode_blocks(frames) == blocks
    for f, b in zip(frames, blocks):
        assert len(f) <= len(b) + 64  # never much bigger than raw


def test_batch_two_threads_decodes_alone_on_one_thread(model):
    rng = random.Random(1)
    words = PROSE.split()
    blocks = [b" ".join(rng.choice(words) for _ in range(rng.randint(40, 160))) for _ in range(16)]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        frames = BlockCodec(model).encode_blocks(blocks)
        assert all(c == Codec.LLM for c in codecs_of(frames))
        torch.set_num_threads(1)
        dec = BlockCodec(model)
        assert [dec.decode_blocks([f])[0] for f in frames] == blocks
    finally:
        torch.set_num_threads(old)


def test_verify_failure_keeps_fallback(model, monkeypatch):
    codec = BlockCodec(model)
    monkeypatch.setattr(codec, "_decode_llm", lambda frames: [b"wrong"] * len(frames))
    frames = codec.encode_blocks([PROSE])
    assert codecs_of(frames) == [Codec.PPMD]      # the best fallback
    assert codec.counters["verify_failures"] == 1
    assert BlockCodec(model).decode_blocks(frames) == [PROSE]


def test_no_llm_policy(model):
    codec = BlockCodec(model, Policy(use_llm=False))
    assert codecs_of(codec.encode_blocks([TEXT * 4])) == [Codec.ZSTD]


def test_unknown_model_is_named(model):
    frame = BlockCodec(model).encode_blocks([PROSE])[0]
    res = BlockCodec(None).decode_each([frame])[0]
    assert isinstance(res, ValueError) and model.short_id.hex() in str(res)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_frames_decode_on_cuda_and_back(model):
    from llmfs.model.modelfile import DEFAULT_MODEL, LanguageModel

    gpu = BlockCodec(LanguageModel.load(DEFAULT_MODEL, "cuda"))
    cpu = BlockCodec(model)
    blocks = [PROSE, TEXT * 3]
    assert gpu.decode_blocks(cpu.encode_blocks(blocks)) == blocks
    assert cpu.decode_blocks(gpu.encode_blocks(blocks)) == blocks


def test_lzma_fallback_where_it_beats_zstd_with_the_x86_filter_on_code():
    code = x86_like(6000)
    codec = BlockCodec(None, Policy(use_zpaq=False))    # ZPAQ's own x86 transform wins here
    frame = Frame.unpack(codec.encode_blocks([code])[0])
    zstd_only = Frame.unpack(BlockCodec(None, Policy(use_lzma=False, use_ppmd=False,
                                                     use_zpaq=False)).encode_blocks([code])[0])
    assert frame.codec == Codec.LZMA and zstd_only.codec == Codec.ZSTD
    assert frame.payload[0] == 1                      # the x86 chain won
    assert len(frame.payload) < 0.9 * len(zstd_only.payload)
    assert codec.decode_blocks([frame.pack()]) == [code]
    # a damaged chain id or stream is an error, never wrong bytes
    for bad in (bytes([7]) + frame.payload[1:], frame.payload[:-3],
                frame.payload[:40] + bytes([frame.payload[40] ^ 4]) + frame.payload[41:]):
        damaged = Frame(Codec.LZMA, frame.raw_len, frame.digest, bad).pack()
        assert isinstance(codec.decode_each([damaged])[0], ValueError)


def test_ppmd_fallback_is_kept_where_it_wins_and_damage_is_an_error():
    block = PROSE
    codec = BlockCodec(None)
    frame = Frame.unpack(codec.encode_blocks([block])[0])
    assert frame.codec == Codec.PPMD and frame.payload[:2] == bytes([8, 24])
    assert codec.decode_blocks([frame.pack()]) == [block]
    without = BlockCodec(None, Policy(use_ppmd=False)).encode_blocks([block])[0]
    assert Frame.unpack(without).codec != Codec.PPMD and len(without) > len(frame.pack())
    # a bad order or memory byte, a truncated or flipped stream: errors, never wrong bytes
    p = frame.payload
    for bad in (bytes([1]) + p[1:], p[:1] + bytes([60]) + p[2:], p[:40], p[:2] + bytes([p[2] ^ 1]) + p[3:]):
        damaged = Frame(Codec.PPMD, frame.raw_len, frame.digest, bad).pack()
        assert isinstance(codec.decode_each([damaged])[0], ValueError)


def test_zpaq_is_told_text_and_code():
    """The block type libzpaq is given: text and x86 code (with more calls than
    the package's own test finds in the middle of a program), else binary;
    code gets the call transform, and it pays."""
    code = x86_like(6000)
    rng = random.Random(2)
    records = b"".join(struct.pack("<IHhf", i * 7, rng.randrange(50), 0, i / 2) for i in range(4000))
    assert [plain.zpaq_method(b)[-1] for b in (PROSE * 4, code, records, bytes(5000))] \
        == ["1", "2", "0", "0"]
    told = plain.zpaq_payload(code)
    assert len(told) < 0.95 * len(plain.zpaq.compress(code, level=5, threads=1, hints=True))
    assert plain.unzpaq(Frame(Codec.ZPAQ, len(code), b"", told)) == code
    # kept over LZMA's x86 chain by the default policy
    assert Frame.unpack(BlockCodec(None).encode_blocks([code])[0]).codec == Codec.ZPAQ


def test_zpaq_fallback_where_it_beats_lzma_and_damage_is_an_error(codec, monkeypatch):
    rng = random.Random(1)     # a table of binary records: ZPAQ about half of LZMA
    code = b"".join(struct.pack("<IHhf", i * 7, rng.randrange(50), rng.randrange(-5, 5), i / 2)
                    for i in range(5000))
    plain_codec = BlockCodec(None)
    frame = Frame.unpack(plain_codec.encode_blocks([code])[0])
    lzma_only = Frame.unpack(BlockCodec(None, Policy(use_zpaq=False)).encode_blocks([code])[0])
    assert frame.codec == Codec.ZPAQ and lzma_only.codec == Codec.LZMA
    assert len(frame.payload) < (1 - Policy().zpaq_gain) * len(lzma_only.payload)
    assert plain_codec.counters["blocks_zpaq"] == 1
    assert plain_codec.decode_blocks([frame.pack()]) == [code]
    # on threads (a codec with workers): the same frames in block order, the same counts
    blocks = [code[:40_000], PROSE * 20, b"", code[20_000:], os.urandom(5000), code[:30_000]]
    serial = BlockCodec(None)
    with BlockCodec(None, workers=2) as threaded:
        assert threaded.encode_blocks(blocks) == serial.encode_blocks(blocks)
        assert threaded.counters == serial.counters
        assert threaded.counters["blocks_zpaq"] == 3
        assert threaded.counters["probe_incompressible"] == 2
    # kept only when it saves zpaq_gain of the frame
    assert Frame.unpack(BlockCodec(None, Policy(zpaq_gain=0.9)).encode_blocks([code])[0]).codec \
        == Codec.LZMA
    # never tried on what the model won, nor on frames too small to gain
    calls = []
    monkeypatch.setattr(policy, "zpaq_payload", lambda raw: calls.append(raw) or b"")
    prose = (Path(__file__).parent.parent / "docs" / "USAGE.md").read_bytes()[:8000]
    won = codec.encode_blocks([prose, bytes(3000)])
    assert codecs_of(won)[0] == Codec.LLM and len(won[0]) > 1024 and calls == []
    monkeypatch.undo()
    # damaged: a wrong tag, a header asking for 2**30-word arrays or a 64 GiB
    # component (the first one's size field), a component type no decoder knows,
    # a header cut short, a cut or flipped stream -- errors, never wrong bytes
    # (nor a decoder allocating gigabytes)
    p = frame.payload
    assert plain.zpaq_memory(p) < 200 << 20
    decoded = []
    monkeypatch.setattr(plain.zpaq, "decompress", lambda b: decoded.append(b) or code)
    for bad in (b"X" + p[1:], p[:20] + bytes([30]) + p[21:], p[:26] + bytes([30]) + p[27:],
                p[:25] + bytes([0]) + p[26:], p[:30]):
        damaged = Frame(Codec.ZPAQ, frame.raw_len, frame.digest, bad).pack()
        assert isinstance(codec.decode_each([damaged])[0], ValueError)
    assert decoded == []
    monkeypatch.undo()
    rng = random.Random(5)
    for _ in range(12):
        b = bytearray(p)
        if rng.random() < 0.3:
            b = b[:rng.randrange(len(b))]
        else:
            for _ in range(rng.randint(1, 3)):
                b[rng.randrange(24, len(b))] ^= 1 << rng.randrange(8)
        damaged = Frame(Codec.ZPAQ, frame.raw_len, frame.digest, bytes(b)).pack()
        got = codec.decode_each([damaged])[0]
        assert got == code or isinstance(got, ValueError)
