"""Every SIMD path of the native core gives the portable kernels' integers,
kernel by kernel (``tests/kernels_check.c``): natively for the paths this
CPU runs, and arm64's NEON path under qemu user emulation (correctness
only; its speed needs an arm64 machine).  `make test` installs the cross
compiler and qemu; without them the arm64 cases are skipped."""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from llmfs.model import native

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "llmfs" / "model"
CHECK = ROOT / "tests" / "kernels_check.c"
FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{CORE}"]
CROSS, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
arm64 = pytest.mark.skipif(not (shutil.which(CROSS) and shutil.which(QEMU)),
                           reason=f"{CROSS} and {QEMU} not installed (make test installs them)")


def run_check(cmd: list[str]) -> list[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


@pytest.mark.skipif(not native.available(), reason="native core not built")
def test_every_path_of_this_cpu_gives_the_portable_integers(tmp_path):
    from llmfs.model import _core

    exe = tmp_path / "check"
    subprocess.run(["cc", *FLAGS, str(CHECK), "-o", str(exe)], check=True)
    lines = run_check([str(exe)])
    # the harness checked exactly the paths the module offers
    assert lines == [f"{p}: same integers as portable" for p in _core.simd_paths()]


@arm64
def test_neon_gives_the_portable_integers_under_qemu(tmp_path):
    exe = tmp_path / "check-arm64"
    subprocess.run([CROSS, *FLAGS, "-static", str(CHECK), "-o", str(exe)], check=True)
    assert run_check([QEMU, str(exe)]) == ["neon: same integers as portable",
                                           "portable: same integers as portable"]


@arm64
def test_the_whole_core_compiles_for_arm64(tmp_path):
    """No x86-only code outside the guarded kernels, no warning (the package's
    flags; a compile check with this Python's headers, which are the same for
    both 64-bit little-endian ABIs)."""
    include = sysconfig.get_paths()["include"]
    for src in sorted(CORE.glob("_*.c")):
        subprocess.run([CROSS, "-O2", "-std=c11", "-Wall", "-Werror", "-fPIC", f"-I{include}", "-c", str(src),
                        "-o", str(tmp_path / (src.stem + ".o"))], check=True)
