"""Random operation sequences on the mount and on a plain directory agree."""
from __future__ import annotations

import itertools
import os
import shutil
import stat

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from conftest import Mounted

BS = 4096
NAMES = st.sampled_from(["a", "b", "c", "sub/d", "sub/e"])
_counter = itertools.count()


@pytest.fixture(scope="module")
def small_block_mount(tmp_path_factory):
    m = Mounted(tmp_path_factory.mktemp("model"))
    m.mkfs("--block-size", str(BS))
    m.start()
    yield m
    m.stop()


def outcome(fn):
    """What a call did: its result, or the errno it failed with."""
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", e.errno)


def data_strategy():
    # short runs of a few symbols: compressible, block-crossing, and cheap to draw
    return st.tuples(st.binary(min_size=1, max_size=64), st.integers(1, 3 * BS)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[:t[1]])


def test_mount_behaves_like_a_plain_directory(small_block_mount, tmp_path):
    class Model(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            n = next(_counter)
            self.roots = [small_block_mount.path(f"run{n}"), tmp_path / f"run{n}"]
            for r in self.roots:
                os.makedirs(r / "sub")

        def both(self, fn):
            results = [outcome(lambda r=r: fn(r)) for r in self.roots]
            assert results[0] == results[1], results
            return results[0]

        @rule(name=NAMES, offset=st.integers(0, 4 * BS), data=data_strategy())
        def write(self, name, offset, data):
            def w(root):
                fd = os.open(root / name, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    return os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            self.both(w)

        @rule(name=NAMES, data=data_strategy())
        def append(self, name, data):
            def w(root):
                with open(root / name, "ab") as f:
                    return f.write(data)
            self.both(w)

        @rule(name=NAMES, size=st.integers(0, 5 * BS))
        def truncate(self, name, size):
            self.both(lambda root: os.truncate(root / name, size))

        @rule(src=NAMES, dst=NAMES)
        def rename(self, src, dst):
            self.both(lambda root: os.rename(root / src, root / dst))

        @rule(src=NAMES, dst=NAMES)
        def link(self, src, dst):
            self.both(lambda root: os.link(root / src, root / dst))

        @rule(name=NAMES)
        def unlink(self, name):
            self.both(lambda root: os.unlink(root / name))

        @rule(name=NAMES, mode=st.sampled_from([0o600, 0o644, 0o755]))
        def chmod(self, name, mode):
            self.both(lambda root: os.chmod(root / name, mode))

        @invariant()
        def same_tree(self):
            def tree(root):
                out = {}
                for dirpath, dirs, files in os.walk(root):
                    for f in files:
                        p = os.path.join(dirpath, f)
                        s = os.stat(p)
                        with open(p, "rb") as fh:
                            out[os.path.relpath(p, root)] = (
                                s.st_size, s.st_nlink, stat.S_IMODE(s.st_mode), fh.read())
                return out
            self.both(tree)

        def teardown(self) -> None:
            for r in self.roots:
                shutil.rmtree(r, ignore_errors=True)

    Model.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                       suppress_health_check=list(HealthCheck))
    Model.TestCase().runTest()
