"""``python mount.py STORE MOUNTPOINT [-f] [-o ...]``: the same as ``llmfs mount``."""
import sys

from llmfs.cli import main

if __name__ == "__main__":
    sys.exit(main(["mount", *sys.argv[1:]]))
