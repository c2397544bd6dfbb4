"""The chdl command line, run as a user runs it: a real subprocess."""

import json
import subprocess
import sys

import numpy as np

import chdl
from chdl.cli import COMMANDS
from chdl.dataset import DatasetWriter


def run(*args):
    return subprocess.run([sys.executable, "-m", "chdl", *args], capture_output=True, text=True)


def test_help_lists_every_command_and_version():
    r = run("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in r.stdout
    v = run("--version")
    assert v.returncode == 0 and chdl.__version__ in v.stdout


def test_every_command_resolves():
    from chdl.cli import main
    import click

    ctx = click.Context(main)
    for name in COMMANDS:
        assert isinstance(main.get_command(ctx, name), click.Command), name


def test_info(tmp_path):
    path = tmp_path / "d.zarr"
    w = DatasetWriter.create(path, n_sequences=2, frames_per_sequence=10, channels=1, height=6, width=8,
                             sequences_per_shard=2, runs=["r"], provenance={"command": "chdl curate x y"})
    w.write_shard(0, frames=np.zeros((2, 10, 1, 6, 8), np.uint8), split=np.array([0, 1]))
    r = run("info", str(path))
    assert r.returncode == 1 and "incomplete dataset" in r.stderr and str(path) in r.stderr
    w.finalize()
    r = run("info", str(path))
    assert r.returncode == 0, r.stderr
    assert "2 sequences x 10 frames x 1x6x8 uint8" in r.stdout and "train 1, val 1" in r.stdout
    j = json.loads(run("info", str(path), "--json").stdout)
    assert j["shape"] == [2, 10, 1, 6, 8] and j["provenance"]["command"] == "chdl curate x y"
    bad = run("info", str(tmp_path / "nope"))
    assert bad.returncode == 1 and "no such dataset" in bad.stderr
