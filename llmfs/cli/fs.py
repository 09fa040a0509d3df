"""``llmfs mkfs / mount / umount``: making and serving a store."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import click

from . import main
from ..config import Config, ConfigError
from ..fs.mounts import mounted_store
from ..store import Store, StoreError

config_opt = click.option("--config", "config_path", type=click.Path(),
                          help="TOML settings (see configs/default.toml).")


def _config(path: str | None, overrides: dict | None = None) -> Config:
    try:
        cfg = Config.load(path)
        return Config.from_dict({**cfg.__dict__, **(overrides or {})}, path or "options") \
            if overrides else cfg
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _model_files(paths: tuple[str, ...]) -> dict[bytes, bytes]:
    """Model files by short id, without loading an engine (the id is the file hash)."""
    from ..model import DEFAULT_MODEL, model_id, read_model_file

    out = {}
    for p in paths or (str(DEFAULT_MODEL),):
        try:
            data = read_model_file(p)
        except OSError as e:
            raise click.ClickException(f"{p}: {e.strerror}") from None
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        out[model_id(data)[:8]] = data
    return out


@main.command()
@click.argument("store", type=click.Path())
@click.option("--block-size", type=int, default=None,
              help="Bytes per block, a power of two (default from the config: 64 KiB).")
@click.option("--model", "models", multiple=True, type=click.Path(),
              help="Model file(s) to keep in the store; the first encodes (default: the "
                   "config's model, else the shipped one).")
@config_opt
def mkfs(store: str, block_size: int | None, models: tuple[str, ...],
         config_path: str | None) -> None:
    """Create an empty store in directory STORE."""
    cfg = _config(config_path)
    try:
        Store.create(store, block_size or cfg.block_size,
                     _model_files(models or ((cfg.model,) if cfg.model else ()))).close()
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"created store {store} (block size {block_size or cfg.block_size})")


def _split_options(opts: tuple[str, ...]) -> tuple[dict, dict]:
    """-o a,b=c: keys of the llmfs config become settings, the rest go to FUSE."""
    known = set(Config.__dataclass_fields__)
    settings, fuse = {}, {}
    for group in opts:
        for item in filter(None, group.split(",")):
            key, eq, value = item.partition("=")
            if key in known and Config.__dataclass_fields__[key].type == "str":
                settings[key] = value
            elif key in known:
                if value.lower() in ("true", "false", "yes", "no", "on", "off") or not eq:
                    settings[key] = value.lower() in ("true", "yes", "on") or not eq
                    continue
                try:
                    settings[key] = float(value) if "." in value else int(value)
                except ValueError:
                    raise click.ClickException(f"-o {item}: {key} needs a number") from None
            else:
                fuse[key] = value if eq else True
    return settings, fuse


@main.command()
@click.argument("store", type=click.Path())
@click.argument("mountpoint", type=click.Path())
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (systemd).")
@click.option("-o", "options", multiple=True,
              help="Comma-separated options: llmfs settings (cache_mib=512) or FUSE ones (ro).")
@click.option("--log", "logfile", type=click.Path(), help="Log to this file (default: "
              "stderr in the foreground, syslog in the background).")
@click.option("--debug", is_flag=True, help="Log every FUSE call.")
@config_opt
def mount(store: str, mountpoint: str, foreground: bool, options: tuple[str, ...],
          logfile: str | None, debug: bool, config_path: str | None) -> None:
    """Mount STORE at MOUNTPOINT."""
    from ..fs.mount import mount as do_mount, setup_logging

    settings, fuse = _split_options(options)
    cfg = _config(config_path, settings)
    setup_logging(foreground, logfile, debug)
    try:
        do_mount(store, mountpoint, cfg, foreground, fuse, debug)
    except StoreError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("-z", "--lazy", is_flag=True, help="Detach now, finish when no longer busy.")
def umount(mountpoint: str, lazy: bool) -> None:
    """Unmount an llmfs mount; waits until its daemon has flushed and exited,
    so the store can be mounted or checked again right away."""
    pid = _daemon_pid(mountpoint)
    r = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint],
                       capture_output=True, text=True)
    if r.returncode:
        raise click.ClickException(r.stderr.strip() or f"fusermount3 failed ({r.returncode})")
    deadline = time.monotonic() + 300
    while pid and not lazy and Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise click.ClickException(f"daemon {pid} still running after unmount")
        time.sleep(0.05)


def _daemon_pid(mountpoint: str) -> int | None:
    """The pid of the daemon serving *mountpoint* (from its store's lock file)."""
    store = mounted_store(mountpoint)
    try:
        return int((Path(store) / "llmfs.lock").read_text().split()[0]) if store else None
    except (OSError, ValueError, IndexError):
        return None
