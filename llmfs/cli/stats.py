"""``llmfs stats``: what a store holds, what some files take, and a live
view of a running daemon."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from . import main
from ..store import Store, StoreError
from .admin import _human
from .fs import _config, config_opt


def _open(store: str) -> Store:
    try:
        return Store(store, readonly=True)
    except StoreError as e:
        raise click.ClickException(str(e)) from None


def _mounted(path: str) -> tuple[str, str]:
    """(mount point, store) of the llmfs mount *path* is in."""
    from ..fs.mounts import mounted_store

    root = os.path.realpath(path)
    while not os.path.ismount(root):
        root = os.path.dirname(root)
    store = mounted_store(root)
    if store is None:
        raise click.ClickException(f"{path}: not in an llmfs mount (nor a store directory)")
    return root, store


def _live(mountpoint: str) -> dict:
    return json.loads(os.getxattr(mountpoint, "user.llmfs.stats"))


def _codec_table(codecs) -> None:
    click.echo(f"{'codec':6} {'blocks':>8} {'logical':>12} {'stored':>12} {'bpb':>7}")
    for name, row in codecs.items():
        if row.blocks:
            click.echo(f"{name:6} {row.blocks:8d} {_human(row.logical):>12} "
                       f"{_human(row.stored):>12} {row.bpb:7.3f}")


@main.command()
@click.argument("targets", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True,
              help="A live view of the daemon serving the mount point TARGET (Ctrl-C ends it).")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between --watch updates.")
@config_opt
def stats(targets: tuple[str, ...], as_json: bool, watch: bool, interval: float,
          config_path: str | None) -> None:
    """What a store holds (TARGET: a store directory, or the mount point of a
    running daemon, which adds its live counters); or, for files and
    directories in a mount, what they take on disk (as compsize: blocks they
    share count once)."""
    _config(config_path)   # the same --config as every command; no key changes stats
    one = targets[0]
    whole = len(targets) == 1 and ((Path(one) / "data.mdb").exists() or os.path.ismount(one))
    if watch:
        if not (len(targets) == 1 and os.path.ismount(one)):
            raise click.ClickException("--watch takes one mount point")
        _watch(one, _mounted(one)[1], interval)
    elif whole:
        _store_stats(one, as_json)
    else:
        _path_stats(targets, as_json)


def _store_stats(target: str, as_json: bool) -> None:
    from ..stats import collect

    live, store = None, target
    if os.path.ismount(target):
        store = _mounted(target)[1]
        live = _live(target)
    s = _open(store)
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
    _codec_table(st.codecs)
    sp = st.space
    click.echo(f"store file {_human(sp['file'])}: frames {_human(sp['frames'])} "
               f"({st.packed_frames} of {sum(r.blocks for r in st.codecs.values())} blocks in "
               f"{st.packs} packs), pack slack {_human(sp['pack_slack'])}, page slack "
               f"{_human(sp['page_slack'])}, metadata {_human(sp['metadata'])}, models "
               f"{_human(sp['models'])}, dictionaries {_human(sp['dictionaries'])}, free pages "
               f"{_human(sp['free'])}")
    for d, n in st.dictionaries.items():
        click.echo(f"dictionary {d}: {_human(n)}"
                   + (" (in use for small blocks)" if d == st.dictionary else ""))
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


def _path_stats(paths: tuple[str, ...], as_json: bool) -> None:
    from ..stats import usage

    mounts = {_mounted(p) for p in paths}
    if len(mounts) > 1:
        raise click.ClickException("the paths are in more than one mount: one at a time")
    (_, store), = mounts
    s = _open(store)
    try:
        u = usage(s, [os.lstat(p).st_ino for p in paths])   # the mount shows store inodes
    finally:
        s.close()
    if as_json:
        click.echo(json.dumps(u.to_dict(), indent=2, sort_keys=True))
        return
    ratio = u.unique_bytes / u.stored_bytes if u.stored_bytes else 0.0
    click.echo(f"{u.files} files, {u.directories} directories: logical "
               f"{_human(u.logical_bytes)}, {u.blocks} blocks ({u.unique_blocks} unique, "
               f"{_human(u.unique_bytes)}), stored {_human(u.stored_bytes)}, ratio {ratio:.2f}x"
               + (f"; {u.missing_blocks} blocks missing or damaged (run llmfs fsck)"
                  if u.missing_blocks else ""))
    _codec_table(u.codecs)
    for m, n in u.models.items():
        click.echo(f"model {m}: {n} llm blocks")
    click.echo("(committed data: what the daemon still buffers is not counted)")


def _watch(mountpoint: str, store: str, interval: float) -> None:
    """Redraw the daemon's state every *interval* seconds: compaction backlog
    and progress, cache hit rate, decode latency, write buffer (one JSON
    object a line when stdout is not a terminal)."""
    prev, t_prev = None, time.monotonic()
    try:
        while True:
            live = _live(mountpoint)
            # opened anew each time: the daemon may grow the map past what a
            # long-lived read-only environment mapped
            s = _open(store)
            try:
                live["compact_backlog"] = s.read(lambda t: t.backlog())
            finally:
                s.close()
            now = time.monotonic()
            click.echo(_watch_text(mountpoint, live, prev, now - t_prev)
                       if os.isatty(1) else json.dumps(live, sort_keys=True))
            prev, t_prev = live, now
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def _watch_text(mountpoint: str, live: dict, prev: dict | None, dt: float) -> str:
    def rate(key: str) -> float:
        return (live.get(key, 0) - prev.get(key, 0)) / dt if prev else 0.0

    hits = live.get("hot_hits", 0) + live.get("warm_hits", 0)
    lookups = hits + live.get("misses", 0)
    decoded = live.get("llm_blocks_decoded", 0)
    lines = [
        f"\x1b[H\x1b[2J{mountpoint}  {time.strftime('%H:%M:%S')}",
        f"compaction  {'running' if live.get('compact_busy') else 'idle'}; backlog {live['compact_backlog']} "
        f"fresh blocks; tried {live.get('compact_tried', 0)} ({rate('compact_tried'):.1f}/s), "
        f"llm {live.get('compact_llm', 0)}, fallback {live.get('compact_fallback', 0)}, "
        f"saved {_human(live.get('compact_saved_bytes', 0))}, packed "
        f"{live.get('compact_packed', 0)} frames",
        f"cache       hit rate {hits / lookups:.1%} of {lookups} lookups" if lookups else
        "cache       no lookups yet",
        f"decoding    {decoded} llm blocks, mean {live.get('llm_decode_ms', 0) / decoded:.0f} ms "
        f"a block; {live.get('plain_blocks_decoded', 0)} model-free" if decoded else
        f"decoding    no llm blocks yet; {live.get('plain_blocks_decoded', 0)} model-free",
        f"writes      {_human(live.get('dirty_bytes', 0))} buffered in "
        f"{live.get('dirty_files', 0)} files, {live.get('open_files', 0)} open; "
        f"errors: read {live.get('read_errors', 0)}, write-back {live.get('writeback_errors', 0)}",
    ]
    return "\n".join(lines)
