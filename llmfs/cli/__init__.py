"""``llmfs`` command line: one small module per group of commands."""
from __future__ import annotations

import logging

import click


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log codec events.")
@click.option("--threads", type=int, default=None, help="Torch threads (default: all cores).")
def main(verbose: bool, threads: int | None) -> None:
    """llmfs: LLM-compressed storage."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="llmfs: %(message)s")
    if threads:
        import torch

        torch.set_num_threads(threads)


from . import admin, codec, fs, stats, train  # noqa: E402  (register the commands)

__all__ = ["main", "admin", "codec", "fs", "stats", "train"]
