"""The llmz stream format, in memory: any input round-trips, any cut is detected."""
import io

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import PROSE
from llmfs.codec.container import ContainerError, compress_stream, decompress_stream, read_header
from llmfs.codec.policy import BlockCodec, Policy


def pack(codec, data, block_size):
    out = io.BytesIO()
    total, written = compress_stream(io.BytesIO(data), out, codec, block_size, batch=3)
    assert total == len(data) and written == len(out.getvalue())
    return out.getvalue()


def unpack(codec, blob):
    src, dst = io.BytesIO(blob), io.BytesIO()
    block_size, _ = read_header(src)
    decompress_stream(src, dst, codec, block_size, batch=2)
    return dst.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=5000), st.just(b""), st.just(b"\x00"),
                 st.builds(lambda n: PROSE * n, st.integers(1, 4))),
       st.sampled_from([1024, 1500, 4096]))
def test_round_trip_zstd_tier(model, data, block_size):
    codec = BlockCodec(model, Policy(use_llm=False))
    assert unpack(codec, pack(codec, data, block_size)) == data


def test_round_trip_multiblock_llm(model):
    codec = BlockCodec(model)
    data = PROSE * 3 + bytes(range(256)) * 4 + PROSE[::-1]
    blob = pack(codec, data, 1024)
    assert codec.counters["blocks_llm"] >= 2
    assert unpack(BlockCodec(model), blob) == data


def test_every_cut_is_detected(model):
    codec = BlockCodec(model, Policy(use_llm=False))
    blob = pack(codec, PROSE * 4, 1024)
    for n in range(len(blob)):
        with pytest.raises(ContainerError):
            unpack(codec, blob[:n])
    with pytest.raises(ContainerError):
        unpack(codec, blob + b"\x00")
