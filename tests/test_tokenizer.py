from hypothesis import given, settings, strategies as st

from conftest import TEXT

SPECIAL = [b"", b"\x00", b"a", b"\r\n\r\n", b"\x00" * 1000, b"\xff\xfe\xc3(\xa0\xa1",
           "naïve 日本語 emoji 🎉".encode(), bytes(range(256)), TEXT * 3]


def test_special_inputs_round_trip(model):
    tok = model.tokenizer
    for data in SPECIAL:
        ids = tok.encode(data)
        assert tok.decode(ids.tolist()) == data
        assert (ids >= 0).all() and (ids < tok.vocab_size).all()


def test_text_is_compacted(model):
    ids = model.tokenizer.encode(TEXT * 10)
    assert len(TEXT * 10) / len(ids) > 2.5  # BPE actually merges English


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_round_trip(model, data):
    tok = model.tokenizer
    assert tok.decode(tok.encode(data).tolist()) == data


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=500))
def test_random_text_round_trip(model, text):
    data = text.encode("utf-8", "surrogatepass")
    tok = model.tokenizer
    assert tok.decode(tok.encode(data).tolist()) == data


def test_batch_equals_single(model):
    tok = model.tokenizer
    batch = tok.encode_batch(SPECIAL)
    assert all((a == tok.encode(d)).all() for a, d in zip(batch, SPECIAL))
