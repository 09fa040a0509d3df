"""``llmfs compact / fsck / import / export``: looking after a store."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import main
from ..store import DamagedRecord, Store, StoreError, StoreLock
from .fs import _config, config_opt

if TYPE_CHECKING:
    from ..codec.policy import Policy


@contextlib.contextmanager
def _exclusive(store: str) -> Iterator[Store]:
    """The store opened for writing by this process alone (not mounted)."""
    try:
        lock = StoreLock(store)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    try:
        s = Store(store)
    except StoreError as e:
        lock.release()
        raise click.ClickException(str(e)) from None
    try:
        yield s
    finally:
        s.close()
        lock.release()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@main.command()
@click.argument("store", type=click.Path())
@click.option("--limit", type=click.IntRange(1), default=None, help="Try at most N blocks.")
@click.option("--model", "model_hex", default=None,
              help="Short id (hex prefix) of a model kept in the store (default: the store's).")
@click.option("--workers", type=click.IntRange(1, 64), default=os.cpu_count() or 1,
              show_default="number of cores", help="Model processes.")
@click.option("--batch", type=click.IntRange(1), default=None,
              help="Blocks encoded per transaction (default: compact_batch of the config).")
@click.option("--retry", is_flag=True,
              help="Also try blocks these models already failed to shrink.")
@click.option("--upgrade", is_flag=True,
              help="Also re-code llm blocks written in an older frame format or by another "
                   "model than the preferred one (each is decoded first, so this takes about "
                   "three times as long per block).")
@click.option("--cluster", "cluster", default=None, metavar="ADDRESS",
              help="Encode on the Ray cluster at ADDRESS ('local:N': N CPUs here); "
                   "default: compact_cluster of the config, else this machine.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="The cluster's workers run the model on CPUs or GPUs.")
@click.option("--verify", type=click.FloatRange(0, 1), default=None,
              help="Share of the cluster's llm frames decoded here before they are kept "
                   "(default 1: all; every frame's checksum is always checked).")
@config_opt
def compact(store: str, limit: int | None, model_hex: str | None, workers: int,
            batch: int | None, retry: bool, upgrade: bool, cluster: str | None,
            device: str | None, verify: float | None, config_path: str | None) -> None:
    """Re-encode a store's zstd blocks with the model, offline (the store must
    not be mounted).  Each block is swapped only when the llm frame is smaller
    and decoded back to the same bytes."""
    from tqdm import tqdm

    from ..compactor import policy_of, recompress, recompress_plain, wanted
    from ..dictionaries import Sampler
    from ..store.schema import ref_tried

    config = _config(config_path)
    policy = policy_of(config)
    batch = batch or config.compact_batch
    pack = config.pack_kib << 10
    cluster = config.compact_cluster if cluster is None else cluster
    with _exclusive(store) as s:
        files, encoders = s.read(lambda t: t.codec_models())
        if model_hex is not None:   # this one model encodes
            models = s.read(lambda t: t.models())
            chosen = [m for m in models if m.hex().startswith(model_hex)]
            if len(chosen) != 1:
                raise click.ClickException(
                    f"model {model_hex!r} {'is ambiguous' if chosen else 'is not in the store'}; "
                    f"the store holds: {', '.join(m.hex() for m in models) or 'none'}")
            files = [models[chosen[0]]] + [d for m, d in models.items() if m != chosen[0]]
            encoders = 1
        if not encoders:
            raise click.ClickException(f"{store}: no model to encode with "
                                       f"(the store holds: {len(files)} models)")
        totals: dict[str, int] = {}
        t0 = time.monotonic()
        sampler = Sampler(s)   # small blocks the model loses on, for a store dictionary
        with _codec(files, workers, encoders, cluster, device or config.compact_cluster_device,
                    config.compact_cluster_verify if verify is None else verify,
                    policy) as codec:
            if cluster:    # enough blocks a round to keep every worker of the cluster busy
                batch = max(batch, 2 * codec.inflight * codec.task_blocks)
            first = codec.encoders[0] if codec.encoders else None
            keys = s.read(lambda t: [k for k, h, _ in t.frame_index()
                                     if h is not None and wanted(h, upgrade, first)])
            tag = codec.encoder_tag
            tried = set() if retry else s.read(
                lambda t: {k for k, r in t.scan("refs") if ref_tried(r) == tag})
            skipped = sum(k in tried for k in keys)
            keys = [k for k in keys if k not in tried]
            keys = keys[:limit] if limit else keys
            with tqdm(total=len(keys), unit="block", desc="compact",
                      disable=not os.isatty(2)) as bar:
                for i in range(0, len(keys), batch):
                    part = keys[i:i + batch]
                    for k, v in recompress(s, codec, part, upgrade=upgrade,
                                           lost=sampler.offer).items():
                        totals[k] = totals.get(k, 0) + v
                    fit = sampler.train() if sampler.due() else []
                    if fit:
                        totals["dictionary"] = recompress_plain(
                            s, fit, codec.encoder_tag, policy=policy)["fallback"]
                    s.write(lambda t: t.pack_loose(pack))
                    bar.update(len(part))
        # what is left of the finished blocks goes into one last pack
        s.write(lambda t: (t.repack_sparse(most=1 << 30), t.adopt_loose(),
                           t.pack_loose(pack, flush=True, most=1 << 30)))
        dt = time.monotonic() - t0
    kinds = "zstd/LZMA/PPMd/ZPAQ and older llm" if upgrade else "zstd/LZMA/PPMd/ZPAQ"
    if totals.get("unencoded"):
        click.echo(f"{totals['unencoded']} blocks not coded (their cluster tasks failed or were "
                   "refused; see the log): run llmfs compact again", err=True)
    click.echo(f"{store}: tried {len(keys)} {kinds} blocks in {dt:.0f} s; "
               f"{totals.get('llm', 0)} now llm, "
               f"{totals.get('fallback', 0)} now zstd -19, LZMA, PPMd or ZPAQ, "
               + (f"{totals.get('upgraded', 0)} llm re-coded smaller, " if upgrade else "")
               + f"{totals.get('kept', 0)} kept as they were; "
               f"saved {_human(totals.get('saved_bytes', 0))}"
               + (f"; a store dictionary re-coded {totals['dictionary']} small blocks"
                  if "dictionary" in totals else "")
               + (f"; {skipped} skipped (already tried with these models; --retry)"
                  if skipped else "")
               + (f"; {totals['verify_failures']} llm verify failures"
                  if totals.get("verify_failures") else ""))


def _codec(files: list[bytes], workers: int, encoders: int, cluster: str, device: str,
           verify: float, policy: Policy):
    """The codec compaction encodes with: here, or on a Ray cluster."""
    from ..codec.policy import BlockCodec

    local = BlockCodec.from_model_files(files, workers, encoders, policy)
    if not cluster:
        return local
    from ..cluster import ClusterCodec, ClusterError

    try:
        return ClusterCodec(local, files, encoders, cluster, device, verify)
    except ClusterError as e:
        local.close()
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("store", type=click.Path())
@click.option("--repair", is_flag=True, help="Fix what can be fixed (the store must not be mounted).")
@click.option("--scrub", is_flag=True, help="Also decode every block and check its bytes.")
@click.option("--workers", type=click.IntRange(1, 64), default=os.cpu_count() or 1,
              show_default="number of cores", help="Model processes for scrubbing llm blocks.")
@config_opt
def fsck(store: str, repair: bool, scrub: bool, workers: int, config_path: str | None) -> None:
    """Check a store.  Exit status as e2fsck: 0 clean, 1 problems found and all
    repaired, 4 problems left, 8 the store could not be checked."""
    from tqdm import tqdm

    from ..config import Config, ConfigError
    from ..fsck import check

    try:
        Config.load(config_path)   # validated like every command's; no key changes fsck
    except ConfigError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(8) from None

    try:
        lock = StoreLock(store) if repair else None
        s = Store(store, readonly=not repair)
    except StoreError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(8) from None
    codec = None
    try:
        if scrub:
            from ..codec.policy import BlockCodec

            codec = BlockCodec.from_model_files(list(s.read(lambda t: t.models()).values()),
                                                workers)
        total = s.read(lambda t: sum(1 for _ in t.stored_blocks())) if scrub else 0
        with tqdm(total=total, unit="block", desc="scrub",
                  disable=not (scrub and os.isatty(2))) as bar:
            rep = check(s, repair, scrub, codec.decode_each if codec else None, bar.update)
    except DamagedRecord as e:   # LMDB's own structure is broken: beyond a repair here
        click.echo(f"Error: {store}: {e.strerror}; copy out what reads "
                   "(llmfs export) into a new store", err=True)
        raise SystemExit(8) from None
    finally:
        if codec is not None:
            codec.close()
        s.close()
        if lock is not None:
            lock.release()
    for p in rep.problems:
        click.echo(p)
    scrubbed = f", {rep.checked_blocks} blocks decoded" if scrub else ""
    if not rep.problems:
        click.echo(f"{store}: clean{scrubbed}")
        raise SystemExit(0)
    if repair:
        click.echo(f"{store}: {len(rep.problems)} problems, {rep.repaired} repairs"
                   + (f"; {rep.lost_blocks} blocks were lost and are now holes"
                      if rep.lost_blocks else "") + scrubbed)
        raise SystemExit(1)
    click.echo(f"{store}: {len(rep.problems)} problems{scrubbed}; run with --repair")
    raise SystemExit(4)


@main.command(name="import")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("store", type=click.Path())
@config_opt
def import_(src: str, store: str, config_path: str | None) -> None:
    """Copy the tree SRC into the root of STORE without FUSE (the store must not
    be mounted): modes, owners, times, symlinks, hard links, xattrs, holes."""
    from tqdm import tqdm

    from ..transfer import TransferError, import_tree, tree_size

    cfg = _config(config_path)
    with _exclusive(store) as s:
        try:
            with tqdm(total=tree_size(Path(src)), unit="B", unit_scale=True, desc="import",
                      disable=not os.isatty(2)) as bar:
                n = import_tree(s, Path(src), cfg.write_zstd_level, bar.update)
        except (TransferError, OSError) as e:
            raise click.ClickException(f"import stopped: {e}") from None
    click.echo(f"imported {n} entries from {src} into {store}")


@main.command(name="export")
@click.argument("store", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--workers", type=click.IntRange(1, 64), default=os.cpu_count() or 1,
              show_default="number of cores", help="Model processes for llm blocks.")
@config_opt
def export_(store: str, dst: str, workers: int, config_path: str | None) -> None:
    """Copy the whole tree of STORE into the new or empty directory DST."""
    from tqdm import tqdm

    _config(config_path)   # the same --config as every command; no key changes export

    from ..transfer import TransferError, export_tree

    try:
        s = Store(store, readonly=True)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    codec = None

    def decode(frames: list[bytes]) -> list:
        nonlocal codec
        if codec is None:
            from ..codec.policy import BlockCodec

            codec = BlockCodec.from_model_files(list(s.read(lambda t: t.models()).values()),
                                                workers)
        return codec.decode_each(frames)

    try:
        with tqdm(unit="B", unit_scale=True, desc="export", disable=not os.isatty(2)) as bar:
            n = export_tree(s, Path(dst), decode, bar.update)
    except (TransferError, OSError) as e:
        raise click.ClickException(f"export stopped: {e}") from None
    finally:
        if codec is not None:
            codec.close()
        s.close()
    click.echo(f"exported {n} entries from {store} into {dst}")
