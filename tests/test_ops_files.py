"""Shipped operations files: the config documents every key, the systemd unit
verifies, and the mount helper mounts an fstab-style line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from llmfs.config import Config

ROOT = Path(__file__).resolve().parent.parent
LLMFS = Path(sys.executable).parent / "llmfs"


def test_default_config_is_the_defaults_and_documents_every_key():
    assert Config.load(ROOT / "configs" / "default.toml") == Config()
    text = (ROOT / "configs" / "default.toml").read_text()
    for f in fields(Config):
        assert "\n# " in text.split(f"\n{f.name} = ")[0][-200:], f"{f.name} undocumented"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path):
    unit = (ROOT / "systemd" / "llmfs@.service").read_text()
    (tmp_path / "llmfs@test.service").write_text(unit.replace("/usr/local/bin/llmfs", str(LLMFS)))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "llmfs@test.service")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert "ExecStop=/usr/bin/fusermount3 -u" in unit and "Type=simple" in unit


def test_mount_helper_takes_fstab_options(tmp_path):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run([str(LLMFS), "mkfs", str(store)], check=True, capture_output=True)
    env = {**os.environ, "LLMFS": str(LLMFS)}
    r = subprocess.run([str(ROOT / "systemd" / "mount.llmfs"), str(store), str(mnt),
                        "-o", "rw,noauto,cache_mib=64,_netdev"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        assert os.path.ismount(mnt)
        (mnt / "f").write_bytes(b"via fstab")
    finally:
        subprocess.run([str(LLMFS), "umount", str(mnt)], check=True)
    time.sleep(0.1)
    assert not os.path.ismount(mnt)
