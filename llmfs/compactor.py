"""Re-encoding stored blocks with the language model.

``recompress`` is the core the background compactor and ``llmfs compact``
build on: it encodes a batch of blocks with the store's model (the codec
verifies every llm frame by decoding it), then swaps each frame in one
write transaction only if the new one is smaller and the block is still
stored.  Blocks are content-addressed, so "still stored under this key"
means "unchanged": a concurrent overwrite makes a new key and never loses
to a stale frame.
"""
from __future__ import annotations

from collections import Counter

from .codec.frame import Codec
from .codec.plain import decode_plain, frame_codec
from .codec.policy import BlockCodec
from .store import Store, Txn


def recompress(store: Store, codec: BlockCodec, keys: list[bytes]) -> Counter[str]:
    """Try to store blocks *keys* as llm frames; returns counts of what happened."""
    stats: Counter[str] = Counter()
    frames = store.read(lambda t: {k: t.frame(k) for k in keys})
    raws: dict[bytes, bytes] = {}
    for k, f in frames.items():
        if f is None or frame_codec(f) == Codec.LLM:
            stats["skipped"] += 1
            continue
        raw = decode_plain(f)
        if isinstance(raw, bytes):
            raws[k] = raw
        else:
            stats["unreadable"] += 1
    order = list(raws)
    new = dict(zip(order, codec.encode_blocks([raws[k] for k in order])))

    def swap(t: Txn) -> None:
        for k in order:
            old = t.frame(k)
            if old is None:
                stats["gone"] += 1
            elif len(new[k]) < len(old) and frame_codec(new[k]) == Codec.LLM:
                t.replace_frame(k, new[k])
                stats["llm"] += 1
                stats["saved_bytes"] += len(old) - len(new[k])
            else:
                stats["kept"] += 1
    store.write(swap)
    stats["verify_failures"] = codec.counters["verify_failures"]
    return stats

