"""The FUSE filesystem.  libfuse3 is chosen before mfusepy loads a library:
with libfuse2 also installed mfusepy would take it, and libfuse2 caps writes
at 4 KiB (shared/MEASUREMENTS.md)."""
import os

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
