"""Decoded-block caches, keyed by block content hash.

Keys are content addresses, so an entry can never go stale: a rewritten
block gets a new key.  Two tiers: *hot* holds decoded bytes; *warm* keeps
llm-decoded blocks as zstd level 1 (cheap to expand, unlike a model decode)
after they fall out of hot.
"""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict

import zstandard


class _LRU:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self.items: OrderedDict[bytes, bytes] = OrderedDict()

    def from_model(self, key: bytes) -> bool:
        """Whether cached block *key* was decoded by the model."""
        with self._lock:
            return key in self._expensive or key in self._warm.items

    def get(self, key: bytes) -> bytes | None:
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
        """Insert; returns the evicted entries."""
        if len(value) > self.capacity:
            return [(key, value)]
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self.items[key] = value
        self.size += len(value)
        evicted = []
        while self.size > self.capacity:
            k, v = self.items.popitem(last=False)
            self.size -= len(v)
            evicted.append((k, v))
        return evicted


class BlockCache:
    """Thread-safe two-tier cache of decoded blocks with hit counters."""

    def __init__(self, hot_bytes: int, warm_bytes: int) -> None:
        self._lock = threading.Lock()
        self._hot = _LRU(hot_bytes)
        self._warm = _LRU(warm_bytes)
        self._expensive: set[bytes] = set()   # hot keys that came from the model
        self.stats: Counter[str] = Counter()

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            return key in self._hot.items or key in self._warm.items

    def from_model(self, key: bytes) -> bool:
        """Whether cached block *key* was decoded by the model."""
        with self._lock:
            return key in self._expensive or key in self._warm.items

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            v = self._hot.get(key)
            if v is not None:
                self.stats["hot_hits"] += 1
                return v
            z = self._warm.get(key)
        if z is None:
            with self._lock:
                self.stats["misses"] += 1
            return None
        v = zstandard.ZstdDecompressor().decompress(z)
        self.put(key, v, expensive=True)
        with self._lock:
            self.stats["warm_hits"] += 1
        return v

    def put(self, key: bytes, value: bytes, expensive: bool = False) -> None:
        """Cache decoded *value*; *expensive* (model-decoded) blocks go to the
        warm tier when they leave the hot one."""
        with self._lock:
            if expensive:
                self._expensive.add(key)
            evicted = self._hot.put(key, value)
            demote = [(k, v) for k, v in evicted if k in self._expensive]
            for k, _ in evicted:
                self._expensive.discard(k)
        for k, v in demote:
            z = zstandard.ZstdCompressor(level=1).compress(v)
            with self._lock:
                self._warm.put(k, z)

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {"hot_bytes": self._hot.size, "hot_blocks": len(self._hot.items),
                    "warm_bytes": self._warm.size, "warm_blocks": len(self._warm.items)}
