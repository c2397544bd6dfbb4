"""Shared helpers for the acquisition tests: a camera config that names the viky test producer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

VIKY_CONFIG = """\
producers: [viky]
cameras:
  viky0: {serial: "0"}
  viky1: {serial: "1"}
"""


def viky_config(tmp_path: Path) -> Path:
    path = tmp_path / "cameras.yaml"
    path.write_text(VIKY_CONFIG)
    return path


def chdl(*args, **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    env = {**os.environ, "CHDL_CAMERAS": "", "GENICAM_GENTL64_PATH": "", "XDG_CONFIG_HOME": "/nonexistent-chdl-test"}
    return subprocess.run([sys.executable, "-m", "chdl", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


def chdl_popen(*args) -> subprocess.Popen:
    env = {**os.environ, "CHDL_CAMERAS": "", "GENICAM_GENTL64_PATH": "", "XDG_CONFIG_HOME": "/nonexistent-chdl-test"}
    return subprocess.Popen([sys.executable, "-m", "chdl", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def square(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (y0, x0, y1, x1) of viky's dark bouncing square on its white background."""
    ys, xs = np.nonzero(pixels < 128)
    assert len(ys), "no dark square in the frame"
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())
