"""The block cache tiers and config validation."""
from __future__ import annotations

import pytest

from llmfs.config import Config, ConfigError
from llmfs.fs.cache import BlockCache


def test_hot_tier_evicts_least_recent():
    c = BlockCache(hot_bytes=250, warm_bytes=0)
    for k in (b"a", b"b"):
        c.put(k, bytes(100))
    assert c.get(b"a") is not None          # a is now the most recent
    c.put(b"c", bytes(100))                 # evicts b
    assert c.get(b"b") is None and c.get(b"a") is not None and c.get(b"c") is not None
    assert c.sizes()["hot_bytes"] == 200


def test_model_decoded_blocks_fall_to_the_warm_tier():
    c = BlockCache(hot_bytes=150, warm_bytes=10_000)
    c.put(b"llm", b"x" * 100, expensive=True)
    c.put(b"zstd", b"y" * 100)              # pushes llm out of hot, into warm (zstd)
    assert c.sizes()["warm_blocks"] == 1 and c.sizes()["warm_bytes"] < 100
    assert c.from_model(b"llm") and not c.from_model(b"zstd")
    assert c.get(b"llm") == b"x" * 100      # warm hit, promoted back to hot
    assert c.stats["warm_hits"] == 1
    c.put(b"other", b"z" * 100)             # plain blocks are simply dropped
    assert c.sizes()["warm_blocks"] == 1 and b"zstd" not in c


def test_config_loads_and_validates(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("cache_mib = 512\nflush_interval_s = 2\n")
    cfg = Config.load(p)
    assert cfg.cache_mib == 512 and cfg.flush_interval_s == 2.0
    for text, message in (("cache_mb = 1", "unknown key 'cache_mb'"),
                          ("cache_mib = 'big'", "cache_mib must be int"),
                          ("block_size = 5000", "invalid value for block_size"),
                          ("cache_mib = [", "not valid TOML")):
        p.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            Config.load(p)
    with pytest.raises(ConfigError, match="No such file"):
        Config.load(tmp_path / "missing.toml")
