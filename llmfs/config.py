"""Settings for the daemon and the tools, read from TOML and validated.

Every key has a default; a config file only names what it changes.  Unknown
keys and wrong types are errors that name the key, never silently ignored.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

MiB = 1 << 20


class ConfigError(ValueError):
    """A config file or option that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Config:
    block_size: int = 64 * 1024       # mkfs only: bytes per block (power of two)
    cache_mib: int = 256              # decoded-block cache (hot tier)
    warm_cache_mib: int = 256         # recently decoded llm blocks kept as zstd (warm tier)
    dirty_mib: int = 64               # write buffer limit over all files before forced flush
    file_flush_blocks: int = 64       # a file flushes once this many of its blocks are dirty
    flush_interval_s: float = 5.0     # dirty data older than this is flushed in the background
    write_zstd_level: int = 1         # zstd level of fresh writes (fast tier)
    readahead_blocks: int = 16        # llm blocks decoded in one batch on sequential reads
    decode_workers: int = 1           # model processes for decoding (0: in the FUSE process)
    decode_prestart: bool = True      # start them at mount, not at the first model-coded read
    compact: bool = True              # re-encode cold blocks with the model inside the daemon
    compact_after_s: float = 600.0    # a block is cold once it was written this long ago
    compact_interval_s: float = 10.0  # pause between compactor rounds when idle
    compact_batch: int = 8            # blocks encoded per round (one transaction)
    compact_workers: int = 1          # model processes for encoding
    compact_cpu_share: float = 0.5    # fraction of wall time the compactor may encode
    compact_yield_s: float = 1.0      # no round starts within this long of a read or write
    compact_upgrade: bool = True      # also re-code llm blocks of older formats / other models
    compact_zpaq: bool = True         # also try ZPAQ where the model did not win (slow to read)
    pack_kib: int = 256               # cold frames are kept in packs of about this size
    compact_cluster: str = ""         # Ray cluster address the compactor encodes on ("" = here)
    compact_cluster_device: str = "cpu"   # ... on its CPUs or GPUs ("cuda")
    compact_cluster_verify: float = 1.0   # ... share of returned llm frames decoded here first
    learn: bool = True                # the daemon fine-tunes a store model on its cold data
    learn_after_mib: float = 16.0     # ... each time this much compressible data was compacted
    learn_sample_mib: float = 8.0     # ... from a sample of this much of it (a tenth held back)
    learn_steps: int = 300            # ... in this many training steps of 16 x 256 tokens
    learn_margin: float = 0.03        # ... kept only if it codes the held-back data this much smaller
    metrics_file: str = ""            # Prometheus text file the daemon rewrites ("" = off)
    model: str = ""                   # mkfs only: model file a new store encodes with ("" = shipped)

    def validate(self) -> "Config":
        checks = {
            "block_size": self.block_size >= 4096 and self.block_size & (self.block_size - 1) == 0,
            "cache_mib": self.cache_mib >= 1, "warm_cache_mib": self.warm_cache_mib >= 0,
            "dirty_mib": self.dirty_mib >= 1, "file_flush_blocks": self.file_flush_blocks >= 1,
            "flush_interval_s": self.flush_interval_s > 0,
            "write_zstd_level": 1 <= self.write_zstd_level <= 22,
            "readahead_blocks": 0 <= self.readahead_blocks <= 1024,
            "decode_workers": 0 <= self.decode_workers <= 64,
            "compact_after_s": self.compact_after_s >= 0,
            "compact_interval_s": self.compact_interval_s > 0,
            "compact_batch": 1 <= self.compact_batch <= 4096,
            "compact_workers": 1 <= self.compact_workers <= 64,
            "compact_cpu_share": 0 < self.compact_cpu_share <= 1,
            "compact_yield_s": self.compact_yield_s >= 0,
            "pack_kib": 4 <= self.pack_kib <= 64 * 1024,
            "compact_cluster_device": self.compact_cluster_device in ("cpu", "cuda"),
            "compact_cluster_verify": 0 <= self.compact_cluster_verify <= 1,
            "learn_after_mib": self.learn_after_mib > 0,
            "learn_sample_mib": self.learn_sample_mib > 0,
            "learn_steps": 1 <= self.learn_steps <= 100_000,
            "learn_margin": 0 <= self.learn_margin < 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid value for {bad[0]}: {getattr(self, bad[0])!r}")
        return self

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "Config":
        types = {f.name: f.type for f in fields(cls)}
        out = {}
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(types)})")
            want = {"float": float, "int": int, "bool": bool, "str": str}[types[key]]
            ok = isinstance(value, want) if want in (bool, str) else (
                not isinstance(value, bool) and isinstance(value, (int, float))
                and (want is float or isinstance(value, int)))
            if not ok:
                raise ConfigError(f"{source}: {key} must be {want.__name__}, got {value!r}")
            out[key] = want(value)
        try:
            return cls(**out).validate()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: Path | str | None) -> "Config":
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        return cls.from_dict(data, str(path))
