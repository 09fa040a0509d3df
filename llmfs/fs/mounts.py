"""What the kernel says is mounted: llmfs mounts and the stores they serve.

The kernel's mount table escapes space, tab, newline and backslash in paths
as octal (``\\040``); a path with any of them read back unescaped would not
match.  libfuse in turn splits ``-o`` on commas unless they are escaped with a
backslash, so the ``fsname`` naming the store is escaped on the way in.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

FSTYPE = "fuse.llmfs"
SOURCE_PREFIX = "llmfs:"
_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def fsname(store: str) -> str:
    """The FUSE ``fsname`` option naming *store* (commas and backslashes escaped
    for libfuse's option parser)."""
    return SOURCE_PREFIX + store.replace("\\", "\\\\").replace(",", "\\,")


def mount_table(table: Path = Path("/proc/self/mounts")) -> list[tuple[str, str, str]]:
    """(source, mount point, fs type) of every mount, unescaped."""
    try:
        lines = table.read_bytes().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) >= 3:
            out.append((_unescape(fields[0]), _unescape(fields[1]), _unescape(fields[2])))
    return out


def mount_type(mountpoint: str) -> str | None:
    """The fs type mounted at *mountpoint* (the last mount there), or None."""
    target = os.path.abspath(mountpoint)
    found = None
    for _, where, fstype in mount_table():
        if where == target:
            found = fstype
    return found


def mounted_store(mountpoint: str) -> str | None:
    """The store an llmfs mount at *mountpoint* serves, or None."""
    target = os.path.realpath(mountpoint)
    found = None
    for source, where, fstype in mount_table():
        if fstype == FSTYPE and where == target and source.startswith(SOURCE_PREFIX):
            found = source[len(SOURCE_PREFIX):]
    return found
