"""chdl import's command line (chdl/cli/importers.py): what --out, --overwrite and --preview may touch, and the
command line it records, run as a user runs it (the real CLI in a subprocess)."""

import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from chdl.dataset import open_dataset


def chdl(*args):
    return subprocess.run([sys.executable, "-m", "chdl", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "a.avi"
    w = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), 10.0, (48, 36), True)
    rng = np.random.default_rng(0)
    for _ in range(30):
        w.write(cv2.cvtColor((rng.random((36, 48)) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    w.release()
    return path


def _error(r) -> str:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_overwrite_never_deletes_what_is_not_a_dataset_nor_the_input(tmp_path, video):
    """`--overwrite` deleted whatever was at --out: a folder of someone's files, the input video itself."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("important")
    assert _error(chdl("import", "video", video, "--out", work, "--overwrite", "-q")) == \
        f"Error: {work}: exists and is not a zarr dataset; refusing to delete it even with --overwrite"
    assert (work / "notes.txt").read_text() == "important"
    copy = tmp_path / "copy.avi"
    copy.write_bytes(video.read_bytes())
    assert _error(chdl("import", "video", copy, "--out", copy, "--overwrite", "-q")) == \
        f"Error: {copy}: is the input {copy}; choose another --out"
    assert copy.read_bytes() == video.read_bytes()
    inside = tmp_path / "d.zarr"
    assert chdl("import", "mnist", "--out", inside, "--train", "2", "--val", "1", "-q").returncode == 0
    (inside / "clip.avi").write_bytes(video.read_bytes())  # a dataset folder holding the input
    assert _error(chdl("import", "video", inside / "clip.avi", "--out", inside, "--overwrite", "-q")) == \
        f"Error: {inside}: holds the input {inside / 'clip.avi'}; choose another --out"
    # a dataset is still replaced, as --overwrite says, once it holds nothing but the dataset
    assert _error(chdl("import", "video", video, "--out", inside, "--overwrite", "--size", "24x32", "-q")) == \
        f"Error: {inside}: a dataset that also holds other files (clip.avi); refusing to delete them even with " \
        "--overwrite (move them out first)"
    (inside / "clip.avi").unlink()
    r = chdl("import", "video", video, "--out", inside, "--overwrite", "--size", "24x32", "-q")
    assert r.returncode == 0, r.stderr
    assert tuple(open_dataset(inside).summary()["shape"][-2:]) == (24, 32)
    # a dataset inside the dataset (or inside a recording): refused, as curate and capture refuse it; one made
    # there before is someone's data that --overwrite of the outer one deleted without a word
    assert _error(chdl("import", "video", video, "--out", inside / "inner.zarr", "-q")) == \
        f"Error: {inside / 'inner.zarr'}: inside the zarr store {inside} (a curated dataset); choose another --out"
    assert _error(chdl("import", "mnist", "--out", inside / "m.zarr", "--train", "2", "--val", "1", "-q")) == \
        f"Error: {inside / 'm.zarr'}: inside the zarr store {inside} (a curated dataset); choose another --out"
    assert not (inside / "inner.zarr").exists() and not (inside / "m.zarr").exists()
    assert chdl("import", "mnist", "--out", tmp_path / "m.zarr", "--train", "2", "--val", "1", "-q").returncode == 0
    (tmp_path / "m.zarr").rename(inside / "inner.zarr")  # (made there by an older chdl)
    assert _error(chdl("import", "video", video, "--out", inside, "--overwrite", "--size", "24x32", "-q")) == \
        f"Error: {inside}: a dataset that also holds other files (inner.zarr); refusing to delete them even with " \
        "--overwrite (move them out first)"
    assert open_dataset(inside / "inner.zarr").n_sequences == 3


def test_paths_that_cannot_be_written_are_one_line_before_any_work(tmp_path, video):
    out = tmp_path / "m.zarr"
    assert _error(chdl("import", "video", video, "--out", video / "x.zarr", "-q")) == \
        f"Error: {video / 'x.zarr'}: cannot write --out there: {video} is a file, not a folder"
    assert _error(chdl("import", "mnist", "--out", out, "--train", "2", "--val", "1", "-q", "--preview",
                       video / "p.png")) == f"Error: {video / 'p.png'}: cannot write --preview there: {video} is a file, not a folder"
    assert _error(chdl("import", "mnist", "--out", out, "--train", "2", "--val", "1", "-q", "--preview", tmp_path)) == \
        f"Error: {tmp_path}: --preview is a folder; give a file name ending in .png"
    assert _error(chdl("import", "mnist", "--out", out, "--train", "2", "--val", "1", "-q", "--preview",
                       tmp_path / "p.jpg")) == f"Error: {tmp_path / 'p.jpg'}: --preview writes a PNG; give a name ending in .png"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no stray tmp file


def test_the_recorded_command_keeps_options_set_to_zero(tmp_path):
    """`--val 0` (0 == False in Python) was left out of the recorded command, whose rerun made 10,000 val sequences."""
    out = tmp_path / "m.zarr"
    assert chdl("import", "mnist", "--out", out, "--train", "3", "--val", "0", "-q").returncode == 0
    assert open_dataset(out).attrs["provenance"]["command"] == f"chdl import mnist --out {out} --train 3 --val 0"


def test_sigterm_removes_the_half_written_dataset_and_says_so(tmp_path):
    """SIGTERM ended an import with exit 143, no word, and a half-written dataset; now as Ctrl-C."""
    out = tmp_path / "m.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "import", "mnist", "--out", str(out), "--train", "200000",
                             "--val", "10", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "zarr.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: chdl import stopped before it finished (rerun the same command)"
    assert not out.exists()


def test_a_read_only_folder_is_named_as_the_user_gave_it(tmp_path, video):
    """--out in a read-only folder said 'tfs/.clips.zarr.creating: cannot write the dataset': a name the user never
    gave (a working copy, the writer's lock beside it). A private read-only tmpfs (skipped where none can be made)."""
    from process_helpers import can_mount_tmpfs

    if not can_mount_tmpfs():
        pytest.skip("needs `unshare -m` and mount rights for a private tmpfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount -t tmpfs -o size=1m tmpfs {ro} && mount -o remount,ro {ro} && "
              f"{sys.executable} -m chdl import video {video} --out {ro / 'clips.zarr'} -q")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert _error(r) == f"Error: {ro / 'clips.zarr'}: cannot write the dataset (Read-only file system)"
