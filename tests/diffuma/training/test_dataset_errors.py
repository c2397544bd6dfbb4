"""`chdl train` on a dataset whose metadata disagrees with itself: one line naming the dataset
and the key (chdl.dataset.validate), not a traceback, "not enough values to unpack", or a nonsense metric."""

import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from chdl.cli import main
from dataset_helpers import as_written_before_checksums


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


def _junk_frames(data):
    for f in (data / "frames" / "c").rglob("*"):
        if f.is_file():
            f.write_bytes(b"junk" * 50)


def test_a_damaged_shard_is_refused_before_training_by_its_checksum(tiny_dataset, tmp_path):
    data = tmp_path / "d.zarr"
    shutil.copytree(tiny_dataset, data)
    _junk_frames(data)
    args = ["train", "--data", data, "--config", "diffuma_tiny", "--out", tmp_path / "run", "--no-progress"]
    r = CliRunner().invoke(main, list(map(str, args)))
    msg = r.output.strip()
    assert r.exit_code == 1 and "\n" not in msg and "Traceback" not in msg, r.output
    assert msg.startswith(f"Error: {data}: shards 0, 1, 2 damaged (frames/c/0/0/0/0/0: 200 bytes, "), msg
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_chunk_is_one_line_from_info_and_train(tiny_dataset, tmp_path, workers):
    """A frames shard overwritten with junk in a dataset without checksums (written before chdl recorded
    them: nothing refuses it up front), and a damaged split chunk for `chdl info`: one line naming the
    dataset, the array and the shard file, also when the read fails in a DataLoader worker process."""
    data = tmp_path / "d.zarr"
    shutil.copytree(tiny_dataset, data)
    as_written_before_checksums(data)
    _junk_frames(data)
    args = ["train", "--data", data, "--config", "diffuma_tiny", "--out", tmp_path / "run", "--no-progress",
            "--set", f"run.num_workers={workers}"]
    r = CliRunner().invoke(main, list(map(str, args)))
    out = r.output.strip().splitlines()
    assert out[0].startswith(f"note: {data} was written before chdl recorded shard checksums"), r.output
    msg = out[-1]
    assert len(out) == 2 and r.exit_code == 1 and msg.startswith(f"Error: {data}: cannot read frames (shard file frames/c/") and \
        msg.endswith("the dataset is damaged on disk"), r.output
    assert "Traceback" not in r.output
    for f in (data / "split" / "c").rglob("*"):
        if f.is_file():
            f.write_bytes(b"junk")
    r = CliRunner().invoke(main, ["info", str(data)])
    assert r.exit_code == 1 and r.output.startswith(f"Error: {data}: cannot read split (") and r.output.count("\n") == 1


def test_an_error_in_a_dataloader_worker_is_reported_in_one_line(tiny_dataset, tmp_path):
    from torch.utils.data import DataLoader

    from chdl.cli.train import _fail
    from chdl.dataset import DatasetFormatError
    from chdl.torch_dataset import SequenceDataset

    data = tmp_path / "d.zarr"
    shutil.copytree(tiny_dataset, data)
    ds = SequenceDataset(data, "train")
    for f in (data / "frames" / "c").rglob("*"):
        if f.is_file():
            f.write_bytes(b"junk" * 50)
    with pytest.raises(DatasetFormatError) as e:
        next(iter(DataLoader(ds, batch_size=1, num_workers=1)))
    assert "Original Traceback" in str(e.value)  # what torch re-raises: the worker's traceback in the message
    msg = _fail(e.value).message
    assert msg.startswith(f"{data}: cannot read frames (shard file frames/c/") and "\n" not in msg, msg


def test_train_refuses_frames_smaller_than_the_ssim_window_before_training(tmp_path):
    """A 6x10 dataset trained its steps, then ended at the first validation with scikit-image's "win_size exceeds
    image extent", leaving a run folder without a checkpoint."""
    from train_helpers import write_moving_square_dataset

    data = write_moving_square_dataset(tmp_path / "small.zarr", h=10, w=16)
    args = ["train", "--data", data, "--config", "diffuma_tiny", "--out", tmp_path / "run", "-q"]
    r = CliRunner().invoke(main, list(map(str, args)))
    assert r.exit_code == 1 and r.output.strip() == (
        f"Error: {data}: frames of 10x16 px, smaller than the 11 x 11 px window of the SSIM that validation scores; "
        "make the dataset at 11 x 11 px or more (or set run.val_every_epochs=0)"), r.output
    assert not (tmp_path / "run").exists()
