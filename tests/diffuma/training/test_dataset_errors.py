"""`chdl train` on a dataset whose metadata disagrees with itself: one line naming the dataset
and the key (chdl.dataset.validate), not a traceback, "not enough values to unpack", or a nonsense metric."""

import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from chdl.cli import main


def _replace_frames(g, data):
    del g["frames"]
    g.create_array("frames", data=data)


@pytest.mark.parametrize("damage,needle", [
    (lambda g: _replace_frames(g, np.zeros(g["frames"].shape[:2] + g["frames"].shape[3:], np.uint8)),
     "frames must be a 5-D array"),
    (lambda g: _replace_frames(g, g["frames"][:].astype(np.float32)), "frames must be uint8 or uint16, not float32"),
    (lambda g: g.attrs.update({"max_value": 0}), "attribute max_value must be a number in (0, 255]"),
    (lambda g: g.attrs.update({"n_sequences": g.attrs["n_sequences"] - 1}), "but the attributes n_sequences"),
])
def test_train_refuses_a_malformed_dataset(tiny_dataset, tmp_path, damage, needle):
    data = tmp_path / "d.zarr"
    shutil.copytree(tiny_dataset, data)
    damage(zarr.open_group(str(data), mode="r+"))
    args = ["train", "--data", data, "--config", "diffuma_tiny", "--out", tmp_path / "run", "--no-progress"]
    r = CliRunner().invoke(main, list(map(str, args)))
    msg = r.output.strip()
    assert r.exit_code == 1 and msg.startswith(f"Error: {data}: malformed dataset (") and needle in msg, msg
    assert "\n" not in msg and not (tmp_path / "run" / "checkpoints").exists()
