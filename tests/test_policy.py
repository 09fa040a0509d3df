"""encode_blocks / decode_blocks: smallest verified frame, exact round trips."""
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import PROSE, TEXT
from llmfs.codec.frame import Codec, Frame
from llmfs.codec.policy import BlockCodec, Policy


def codecs_of(frames):
    return [Frame.unpack(f).codec for f in frames]


def test_policy_picks_per_kind(codec):
    text = PROSE
    rand = os.urandom(3000)
    zeros = bytes(5000)
    frames = codec.encode_blocks([text, rand, zeros, b"", b"x"])
    assert codecs_of(frames) == [Codec.LLM, Codec.RAW, Codec.ZSTD, Codec.RAW, Codec.RAW]
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
    assert codecs_of(frames) == [Codec.ZSTD]
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
