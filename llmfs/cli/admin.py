"""``llmfs compact / stats``: looking after a store."""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import click

from . import main
from ..store import DamagedRecord, Store, StoreError, StoreLock
from .fs import _config, config_opt


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
@config_opt
def compact(store: str, limit: int | None, model_hex: str | None, workers: int,
            batch: int | None, retry: bool, upgrade: bool, config_path: str | None) -> None:
    """Re-encode a store's zstd blocks with the model, offline (the store must
    not be mounted).  Each block is swapped only when the llm frame is smaller
    and decoded back to the same bytes."""
    from tqdm import tqdm

    from ..codec.frame import Frame
    from ..codec.policy import BlockCodec
    from ..compactor import recompress, wanted
    from ..store.schema import ref_tried

    batch = batch or _config(config_path).compact_batch
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
        with BlockCodec.from_model_files(files, workers, encoders) as codec:
            first = codec.encoders[0] if codec.encoders else None
            keys = s.read(lambda t: [k for k, f in t.scan("blocks")
                                     if wanted(Frame.unpack(f), upgrade, first)])
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
                    for k, v in recompress(s, codec, part, upgrade=upgrade).items():
                        totals[k] = totals.get(k, 0) + v
                    bar.update(len(part))
        dt = time.monotonic() - t0
    kinds = "zstd/LZMA/PPMd and older llm" if upgrade else "zstd/LZMA/PPMd"
    click.echo(f"{store}: tried {len(keys)} {kinds} blocks in {dt:.0f} s; "
               f"{totals.get('llm', 0)} now llm, {totals.get('fallback', 0)} now zstd -19, LZMA or PPMd, "
               + (f"{totals.get('upgraded', 0)} llm re-coded smaller, " if upgrade else "")
               + f"{totals.get('kept', 0)} kept as they were; "
               f"saved {_human(totals.get('saved_bytes', 0))}"
               + (f"; {skipped} skipped (already tried with these models; --retry)"
                  if skipped else "")
               + (f"; {totals['verify_failures']} llm verify failures"
                  if totals.get("verify_failures") else ""))


@main.command()
@click.argument("target", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_opt
def stats(target: str, as_json: bool, config_path: str | None) -> None:
    """What a store holds (TARGET: a store directory, or the mount point of a
    running daemon, which adds its live counters)."""
    _config(config_path)   # the same --config as every command; no key changes stats
    from ..stats import collect

    live = None
    store = target
    if os.path.ismount(target):
        from ..fs.mounts import mounted_store

        store = mounted_store(target)
        if store is None:
            raise click.ClickException(f"{target}: not an llmfs mount")
        live = json.loads(os.getxattr(target, "user.llmfs.stats"))
    try:
        s = Store(store, readonly=True)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    try:
        st = collect(s)
    finally:
        s.close()
    if as_json:
        click.echo(json.dumps({**st.to_dict(), "live": live}, indent=2, sort_keys=True))
        return
    click.echo(f"store {Path(store)}: {st.files} files, {st.directories} directories")
    click.echo(f"logical {_human(st.logical_bytes)} (holes excluded: {_human(st.mapped_bytes)}), "
               f"stored {_human(st.stored_bytes)}, ratio {st.ratio:.2f}x, "
               f"dedup saved {_human(st.dedup_saved_bytes)}")
    click.echo(f"{'codec':6} {'blocks':>8} {'logical':>12} {'stored':>12} {'bpb':>7}")
    for name, row in st.codecs.items():
        click.echo(f"{name:6} {row.blocks:8d} {_human(row.logical):>12} "
                   f"{_human(row.stored):>12} {row.bpb:7.3f}")
    for m, n in st.models.items():
        click.echo(f"model {m}: {n} llm blocks; {st.model_about.get(m, '?')}")
    if st.learn_last:
        ll = st.learn_last
        click.echo(f"store learning: last run {ll.get('trained_at')}: model {ll.get('model')} "
                   f"{ll.get('held_bpb')} bpb vs {ll.get('rival_bpb')} on held-back data, "
                   f"{'registered' if ll.get('registered') else 'not registered'}; "
                   f"{_human(st.learn_pending_bytes)} compacted since")
    if st.damaged_frames:
        click.echo(f"damaged frames: {st.damaged_frames} (run llmfs fsck)")
    if live:
        click.echo("daemon: " + ", ".join(f"{k} {v}" for k, v in sorted(live.items())))


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
