"""Codec benchmark on ../shared/corpus: `python bench/codec.py [--limit BYTES]`.

Prints one markdown table (llm vs zstd -19 per 64 KiB block vs whole-sample
xz -9e, plus llm encode and batched-decode speed).  Not a test.
"""
import sys

from llmfs.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
