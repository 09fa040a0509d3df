"""``llmfs train``: a model fitted to one archive."""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from . import main
from .admin import _exclusive
from .fs import _config, config_opt


class ByteSize(click.ParamType):
    """A byte count such as 8M, 512K or 1048576."""
    name = "size"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            n = int(float(text[:-1] if mult > 1 else text) * mult)
        except ValueError:
            self.fail(f"{value!r} is not a size like 8M, 512K or 1048576", param, ctx)
        if n <= 0:
            self.fail(f"{value!r}: must be more than 0 bytes", param, ctx)
        return n


@main.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False),
              help="Also write the model file here (for a directory SOURCE: default "
                   "llmfs-<id>.safetensors in the current directory).")
@click.option("--sample", type=ByteSize(), default="8M", show_default=True,
              help="Bytes of the archive to learn from (a tenth is held back to measure).")
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True,
              help="Training steps of 16 x 256 tokens.")
@click.option("--base", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Model to start from (default: the shipped one; its float weights must "
                   "lie next to it).")
@click.option("--seed", type=int, default=0, show_default=True)
@config_opt
def train(source: str, out: str | None, sample: int, steps: int, base: str | None, seed: int,
          config_path: str | None) -> None:
    """Fine-tune a model on a sample of SOURCE, a store (not mounted) or a directory.

    For a store, the model is kept in it and the compactor tries it first for
    every cold block, keeping the smaller verified frame of it and the store's
    own model; it is registered only if it codes the held-back sample smaller.
    """
    from tqdm import tqdm

    from ..model import DEFAULT_MODEL, model_id
    from ..training.archive import register, sample_directory, sample_store, train_model

    cfg = _config(config_path)
    base_path = Path(base) if base else DEFAULT_MODEL
    is_store = (Path(source) / "data.mdb").exists()
    t0 = time.monotonic()
    rival = None      # what the new model must beat: a store's current encoding model
    if is_store:
        with _exclusive(source) as s:
            blocks = sample_store(s, sample, _decoder(s), seed)
            files, encoders = s.read(lambda t: t.codec_models())
            rival = files[0] if encoders else None
    else:
        blocks = sample_directory(Path(source), sample, cfg.block_size, seed)
    click.echo(f"sampled {sum(map(len, blocks)):,} bytes in {len(blocks)} blocks "
               f"from {source}", err=True)
    try:
        with tqdm(total=steps, unit="step", desc="train", disable=not os.isatty(2)) as bar:
            res = train_model(base_path, blocks, steps=steps, progress=bar.update,
                              notes={"seed": seed}, rival=rival)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    mid = model_id(res.model)
    click.echo(f"model {mid.hex()[:16]}: trained on {res.train_bytes:,} bytes, {steps} steps, "
               f"{time.monotonic() - t0:.0f} s; held-back {res.held_bytes:,} bytes: "
               f"{res.new_bpb:.3f} bpb ({'store' if rival else 'base'} model {res.base_bpb:.3f}, "
               f"{100 * (res.new_stored / res.base_stored - 1):+.1f} %)")
    if out or not is_store:
        path = Path(out or f"llmfs-{mid.hex()[:16]}.safetensors")
        path.write_bytes(res.model)
        click.echo(f"wrote {path}")
    if is_store:
        if not res.wins:
            click.echo(f"{source}: not registered (no better than the store's model on "
                       "the held-back sample)")
            return
        with _exclusive(source) as s:
            ids = register(s, res.model)
        click.echo(f"{source}: the compactor now encodes with "
                   f"{', '.join(i.hex() for i in ids)} (smallest frame per block)")


def _decoder(store):
    """Decodes llm frames of *store* (only when the plain ones are too few)."""
    def decode(frames: list[bytes]) -> list:
        from ..codec.policy import BlockCodec

        files, _ = store.read(lambda t: t.codec_models())
        with BlockCodec.from_model_files(files, os.cpu_count() or 1) as codec:
            return codec.decode_each(frames)
    return decode
