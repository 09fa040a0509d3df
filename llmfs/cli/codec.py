"""``llmfs compress / decompress / bench``: the codec without a filesystem."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import BinaryIO, Iterator

import click

from . import main


DEFAULT_BLOCK = 64 * 1024


def _find_model(file: str, mid: bytes, paths: tuple[str, ...], device: str):
    """The model a container names: among --model files first, then the shipped
    models (the default and retired defaults)."""
    from ..model import shipped_model

    for m in _load_models(paths, device) if paths else ():
        if m.id == mid:
            return m
    path = shipped_model(mid)
    if path is None:
        raise click.ClickException(f"{file}: unknown model id {mid.hex()}; "
                                   "pass its file with --model")
    return _load_models((str(path),), device)[0]


def _load_models(paths: tuple[str, ...], device: str):
    from ..model.modelfile import DEFAULT_MODEL, LanguageModel

    try:
        return [LanguageModel.load(p, device) for p in (paths or (DEFAULT_MODEL,))]
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot load model: {e}") from None


@contextlib.contextmanager
def _open_in(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise click.ClickException(f"{path}: {e.strerror}") from None
    with f:
        yield f


@contextlib.contextmanager
def _open_out(path: str, force: bool) -> Iterator[BinaryIO]:
    """Write to a temporary name and rename on success: no half-written outputs."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if not force and os.path.exists(path):
        raise click.ClickException(f"{path} already exists; use -f to overwrite")
    tmp = Path(path + ".part")
    try:
        f = open(tmp, "wb")
    except OSError as e:
        raise click.ClickException(f"{path}: {e.strerror}") from None
    try:
        with f:
            yield f
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _progress(total: int | None, label: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False,
                disable=not sys.stderr.isatty())


def _size(path: str) -> int | None:
    try:
        return None if path == "-" else Path(path).stat().st_size
    except OSError:
        return None


model_opt = click.option("--model", "models", multiple=True, type=click.Path(),
                         help="Model file (default: the shipped default model).")
device_opt = click.option("--device", default="cpu", show_default=True,
                          help="cpu or cuda (same bits either way).")
force_opt = click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
workers_opt = click.option("--workers", type=click.IntRange(1, 64), default=os.cpu_count() or 1,
                           show_default="number of cores",
                           help="Single-thread model processes (same bits for any number).")


@main.command()
@click.argument("file")
@click.option("-o", "--output", help="Output path (default FILE.llmz; - for stdout).")
@click.option("--block-size", type=click.IntRange(1024, 1 << 24), default=DEFAULT_BLOCK,
              show_default=True)
@click.option("--no-llm", is_flag=True, help="zstd/raw only.")
@model_opt
@device_opt
@workers_opt
@force_opt
def compress(file: str, output: str | None, block_size: int, no_llm: bool,
             models: tuple[str, ...], device: str, workers: int, force: bool) -> None:
    """Compress FILE (- for stdin) into an llmz container."""
    from ..codec.container import compress_stream
    from ..codec.frame import Codec
    from ..codec.policy import BlockCodec, Policy

    out = output or ("-" if file == "-" else file + ".llmz")
    with _open_in(file) as src:
        model = None if no_llm else _load_models(models, device)[0]
        with BlockCodec(model, Policy(use_llm=not no_llm), workers=_workers(workers, device)) \
                as codec, _open_out(out, force) as dst, _progress(_size(file), "compress") as bar:
            total, written = compress_stream(src, dst, codec, block_size, batch=4 * workers,
                                             progress=bar.update)
    c = codec.counters
    counts = {k.name.lower(): c[f"blocks_{k.name.lower()}"] for k in Codec}
    always = ["llm", "zstd", "raw"]      # then the fallbacks that were used
    kinds = " ".join(f"{n} {counts[n]}" for n in always + [n for n, v in counts.items()
                                                            if v and n not in always])
    click.echo(f"{file}: {total} -> {written} bytes ({8 * written / max(total, 1):.3f} bpb); "
               f"blocks {kinds}"
               + (f"; {c['verify_failures']} llm verify failures" if c["verify_failures"] else ""),
               err=True)


@main.command()
@click.argument("file")
@click.option("-o", "--output", help="Output path (default FILE without .llmz; - for stdout).")
@model_opt
@device_opt
@workers_opt
@force_opt
def decompress(file: str, output: str | None, models: tuple[str, ...], device: str,
               workers: int, force: bool) -> None:
    """Decompress an llmz container."""
    from ..codec.container import ContainerError, decompress_stream, read_header
    from ..codec.policy import BlockCodec

    if output is None:
        if file == "-":
            output = "-"
        elif file.endswith(".llmz"):
            output = file[:-5]
        else:
            raise click.ClickException(f"{file}: no .llmz suffix; name the output with -o")
    with _open_in(file) as src:
        try:
            block_size, model_id = read_header(src)
            model = None if model_id == bytes(32) else _find_model(file, model_id, models, device)
            with BlockCodec(model, workers=_workers(workers, device) if model else 0) as codec, \
                    _open_out(output, force) as dst, _progress(None, "decompress") as bar:
                decompress_stream(src, dst, codec, block_size, batch=32 * workers,
                                  progress=bar.update)
        except ContainerError as e:
            raise click.ClickException(f"{file}: {e}") from None


def _workers(workers: int, device: str) -> int:
    """BlockCodec's workers: one CPU worker runs in-process (no spawn cost)."""
    return 0 if device != "cpu" or workers == 1 else workers


@main.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("--limit", type=int, default=1 << 20, show_default=True,
              help="Bytes of each file to use (0: whole files).")
@click.option("--block-size", type=int, default=DEFAULT_BLOCK, show_default=True)
@model_opt
@workers_opt
def bench(files: tuple[str, ...], limit: int, block_size: int, models: tuple[str, ...],
          workers: int) -> None:
    """Ratio and speed table: llm vs zstd -19 (per block) vs xz -9e (whole file)."""
    from ..bench import corpus_files, run

    model = _load_models(models, "cpu")[0]
    paths = [Path(f) for f in files] or corpus_files()
    if not paths:
        raise click.ClickException("no files given and ../shared/corpus not found")
    run(paths, model, limit, block_size, workers)

