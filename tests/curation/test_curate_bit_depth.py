"""Bit depth from the raw manifest to the dataset: `chdl curate` scales by 2^bits - 1 where bits are the
run's significant bits (a 12-bit Mono16 capture: 4095, not 65535), through the real CLI in a subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest

from chdl.dataset import open_dataset
from chdl.torch_dataset import SequenceDataset
from curation.synthetic import SynthSpec
from curation_helpers import write_run


def chdl(*args):
    return subprocess.run([sys.executable, "-m", "chdl", *map(str, args)], capture_output=True, text=True, timeout=300)


def _capture_sim(out, fmt):
    """A run of the simulated camera (its Mono16 data is 12-bit by default), recorded by `chdl capture`."""
    p = chdl("capture", "--camera", "sim0", "--out", out, "--run-id", "r", "--pixel-format", fmt, "--width", 160,
             "--height", 120, "--fps", 500, "--lanes", 2, "--positions", 10, "--quiet")
    assert p.returncode == 0, p.stderr
    return out / "r"


@pytest.mark.parametrize("fmt,bits", [("Mono16", 12), ("Mono8", 8)])
def test_a_simulated_run_curates_with_its_bit_depth(tmp_path, fmt, bits):
    run = _capture_sim(tmp_path / "raw", fmt)
    assert json.loads((run / "manifest.json").read_text())["settings"]["bit_depth"] == bits
    p = chdl("curate", tmp_path / "raw", tmp_path / "d.zarr", "--quiet")
    assert p.returncode == 0, p.stderr
    ds = open_dataset(tmp_path / "d.zarr")
    assert ds.attrs["max_value"] == 2 ** bits - 1
    assert ds.attrs["provenance"]["bit_depth"] == {"bits": bits, "from": "manifest"}
    x, y = SequenceDataset(tmp_path / "d.zarr", "all")[0]
    values = np.concatenate([x.numpy().ravel(), y.numpy().ravel()])
    # intensities over most of [0, 1] (at 65535 a 12-bit run would sit in 0.001-0.05)
    assert values.max() <= 1.0 and np.percentile(values, 99.9) > 0.5 and values.min() < 0.1, (values.min(), values.max())


def test_a_mono16_recording_without_bit_depth_warns_and_uses_the_full_range_unless_told(tmp_path):
    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)
    write_run(tmp_path / "raw" / "old", lanes=2, spec=spec, fmt="Mono16")  # 12-bit data, no settings.bit_depth
    p = chdl("curate", tmp_path / "raw", tmp_path / "a.zarr")
    assert p.returncode == 0, p.stderr
    manifest = tmp_path / "raw" / "old" / "manifest.json"
    line = next(ln for ln in p.stderr.splitlines() if "bit_depth" in ln)
    assert line.startswith(f"warning: {manifest}: no settings.bit_depth (recorded before chdl recorded bit depth, or "
                           "the camera could not tell): using the full 16 bits of Mono16 (max_value 65535); its first "
                           "frame's pixels reach "), line
    # the bits the data needs are named (12-bit data at 16 bits can read as frames without an image, all excluded)
    assert "which 12 bits hold: if the camera delivers 12, rerun with chdl curate --bit-depth 12" in line, line
    assert open_dataset(tmp_path / "a.zarr").attrs["max_value"] == 65535
    p = chdl("curate", tmp_path / "raw", tmp_path / "b.zarr", "--bit-depth", "12", "--quiet")
    assert p.returncode == 0, p.stderr
    ds = open_dataset(tmp_path / "b.zarr")
    assert ds.attrs["max_value"] == 4095 and ds.attrs["provenance"]["bit_depth"] == {"bits": 12, "from": "--bit-depth"}
    assert "--bit-depth 12" in ds.attrs["provenance"]["command"]


def test_twelve_bit_frames_read_at_sixteen_bits_that_exclude_everything_point_to_the_bit_depth(tmp_path):
    """The simulator's 12-bit frames in Mono16, their bit depth deleted: at max_value 65535 every frame spreads
    over < 1 % of full scale and counts as carrying no image, so every sequence was excluded, and neither the
    ~40 'no image' warnings nor the final one said the bit depth was the likely cause."""
    import json

    assert chdl("simulate", "corpus", tmp_path / "raw", "--sequences", "4", "--lanes-per-run", "4", "--width", "200",
                "--height", "150", "--pixel-format", "Mono16", "--fault-rate", "0", "-q").returncode == 0
    manifest = tmp_path / "raw" / "run_00000" / "manifest.json"
    m = json.loads(manifest.read_text())
    del m["settings"]["bit_depth"]
    manifest.write_text(json.dumps(m))
    p = chdl("curate", tmp_path / "raw", tmp_path / "d.zarr")
    assert p.returncode == 0, p.stderr
    first = p.stderr.splitlines()[0]
    assert "which 12 bits hold: if the camera delivers 12, rerun with chdl curate --bit-depth 12" in first, p.stderr
    assert "warning: every sequence was excluded (4: " in p.stderr and "or the QC floors and z in the config; or the " \
        "bit depth: 16 bits were assumed for Mono16 runs that did not record theirs (rerun with --bit-depth N" in p.stderr
    report = json.loads((tmp_path / "d.qc.json").read_text())
    assert "--bit-depth 12" in report["warnings"][0], report["warnings"][0]
    p = chdl("curate", tmp_path / "raw", tmp_path / "e.zarr", "--bit-depth", "12", "--quiet")
    assert p.returncode == 0 and "excluded" not in p.stderr, p.stderr
    assert open_dataset(tmp_path / "e.zarr").summary()["splits"]["excluded"] == 0


def test_bit_depth_refusals(tmp_path):
    write_run(tmp_path / "raw" / "a", lanes=1, bit_depth=8)
    p = chdl("curate", tmp_path / "raw", tmp_path / "d.zarr", "--bit-depth", "12", "--quiet")
    manifest = tmp_path / "raw" / "a" / "manifest.json"
    assert p.returncode == 1 and p.stderr == (f"Error: {manifest}: --bit-depth 12 refused: bit depth must be an "
                                              "integer in [1, 8] for Mono8 pixels, not int 12\n")
    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)
    write_run(tmp_path / "mixed" / "a", lanes=1, spec=spec, fmt="Mono16", bit_depth=12)
    write_run(tmp_path / "mixed" / "b", lanes=1, spec=spec, fmt="Mono16", bit_depth=16)
    p = chdl("curate", tmp_path / "mixed", tmp_path / "d.zarr", "--quiet")
    assert p.returncode == 1 and "16 significant bits differ from" in p.stderr and "--bit-depth N" in p.stderr
    assert not (tmp_path / "d.zarr").exists()
    # told to curate both at 16 bits, the 12-bit run is named (its frames read as "no image", all dropped, and no
    # word said why); the 16-bit run is not
    p = chdl("curate", tmp_path / "mixed", tmp_path / "d.zarr", "--bit-depth", "16")
    assert p.returncode == 0, p.stderr
    told = [ln for ln in p.stderr.splitlines() if "overrides" in ln]
    assert told == [f"warning: {tmp_path / 'mixed' / 'a' / 'manifest.json'}: --bit-depth 16 overrides the 12 "
                    "significant bits this run recorded: its pixels fill 1/16 of the range, and its frames may read "
                    "as dark or as no image; curate runs of one bit depth together"], p.stderr
    assert "or the bit depth: --bit-depth 16 is not what 1 run(s) recorded (the report's warnings name them)" in \
        p.stderr  # (both runs' frames here are 12-bit data: every sequence excluded)


def test_pixels_above_the_bit_depth_are_refused_by_name(tmp_path):
    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)  # 12-bit data
    write_run(tmp_path / "raw" / "a", lanes=2, spec=spec, fmt="Mono16", bit_depth=12)
    p = chdl("curate", tmp_path / "raw", tmp_path / "d.zarr", "--bit-depth", "10", "--quiet")
    assert p.returncode == 1, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: {tmp_path / 'raw' / 'a' / 'frames'}/") and \
        "above max_value 1023 (10 significant bits, from the --bit-depth); give the right --bit-depth" in line, line
    assert not (tmp_path / "d.zarr").exists()  # refused while measuring the baselines, before anything was written


def test_a_pixel_above_found_after_the_dataset_was_begun_names_its_file_and_the_way_on(tmp_path):
    """Found in a shard (the lane was not among the calibration sequences): the frame's file, and that the rerun
    needs --overwrite (a resume with another --bit-depth is refused: the dataset was begun with the wrong one)."""
    import json

    import cv2

    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)
    run = tmp_path / "raw" / "a"
    write_run(run, lanes=3, spec=spec, fmt="Mono16", bit_depth=12)
    rec = [json.loads(line) for line in (run / "frames.jsonl").read_text().splitlines()][2 * 10 + 3]  # lane 2, t 3
    bright = cv2.imread(str(run / rec["file"]), cv2.IMREAD_UNCHANGED)
    bright[5, 5] = 60000
    cv2.imwrite(str(run / rec["file"]), bright)
    (tmp_path / "c.yaml").write_text("qc:\n  calibration_sequences: 1\nsequences_per_shard: 1\n")  # lane 0 only
    p = chdl("curate", tmp_path / "raw", tmp_path / "d.zarr", "--config", tmp_path / "c.yaml", "--quiet")
    assert p.returncode == 1 and p.stderr.strip() == (
        f"Error: {run / rec['file']}: pixel values up to 60000 (lane 2), above max_value 4095 (12 significant bits, "
        f"from the manifest); give the right --bit-depth and --overwrite ({tmp_path / 'd.zarr'} was begun with the "
        "wrong bit depth)"), p.stderr


def test_the_range_check_is_skipped_only_where_nothing_can_be_above(monkeypatch):
    """8-bit frames at max_value 255 are not scanned (nothing can be above); 8-bit frames of a lower bit
    depth and 16-bit frames still are, and a pixel above is refused."""
    from types import SimpleNamespace

    from curation import pipeline

    seq = SimpleNamespace(run=0, lane=3, records=[None, SimpleNamespace(file="frames/000031.png")])  # (what it reads)
    for dtype, max_value, top, refused in ((np.uint8, 255.0, 255, False), (np.uint8, 63.0, 64, True),
                                           (np.uint8, 63.0, 63, False), (np.uint16, 4095.0, 4096, True)):
        monkeypatch.setattr(pipeline, "_CTX", {"max_value": max_value, "run_paths": ["run-a"], "bit_depth": "test"})
        frames = np.zeros((2, 4, 4), dtype)
        frames[1, 2, 2] = top
        if refused:
            with pytest.raises(pipeline.CurateError, match=f"run-a/frames/000031.png: pixel values up to {top} \\(lane 3\\), "
                                                           "above max_value"):
                pipeline._check_range(frames, seq)
        else:
            pipeline._check_range(frames, seq)


def test_an_overwrite_that_cannot_finish_puts_the_previous_dataset_back(tmp_path):
    """`curate RAW OUT --overwrite` that fails on a pixel above the bit depth after OUT was begun deleted the complete
    dataset that was there (and the advice to rerun could not work). The dataset replaced is kept aside until the new
    one is complete, and put back when the replacement cannot finish."""
    import json

    import cv2

    good = tmp_path / "good" / "a"
    write_run(good, lanes=3)
    out = tmp_path / "d.zarr"
    (tmp_path / "c.yaml").write_text("qc:\n  calibration_sequences: 1\nsequences_per_shard: 1\n")
    assert chdl("curate", tmp_path / "good", out, "--config", tmp_path / "c.yaml", "--quiet").returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)
    bad = tmp_path / "bad" / "a"
    write_run(bad, lanes=3, spec=spec, fmt="Mono16", bit_depth=12)
    rec = [json.loads(line) for line in (bad / "frames.jsonl").read_text().splitlines()][2 * 10 + 3]
    bright = cv2.imread(str(bad / rec["file"]), cv2.IMREAD_UNCHANGED)
    bright[5, 5] = 60000
    cv2.imwrite(str(bad / rec["file"]), bright)
    p = chdl("curate", tmp_path / "bad", out, "--config", tmp_path / "c.yaml", "--overwrite", "--quiet")
    assert p.returncode == 1 and p.stderr.strip().endswith(f"give the right --bit-depth; {out} is the dataset that was "
                                                           "there before, untouched"), p.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left aside
    # a replacement that completes removes the one it replaced
    assert chdl("curate", tmp_path / "bad", out, "--config", tmp_path / "c.yaml", "--bit-depth", "16", "--overwrite",
                "--quiet").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_pixel_above_found_while_measuring_the_baselines_says_what_became_of_out(tmp_path):
    """Found in a calibration sequence, before OUT is made: the error gave no word about OUT, which for an
    --overwrite is the dataset that was there, untouched (docs/curation.md said so)."""
    import json

    import cv2

    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)
    run = tmp_path / "raw" / "a"
    write_run(run, lanes=2, spec=spec, fmt="Mono16", bit_depth=12)
    rec = json.loads((run / "frames.jsonl").read_text().splitlines()[3])  # lane 0: a calibration sequence
    bright = cv2.imread(str(run / rec["file"]), cv2.IMREAD_UNCHANGED)
    bright[5, 5] = 60000
    cv2.imwrite(str(run / rec["file"]), bright)
    out = tmp_path / "d.zarr"
    p = chdl("curate", tmp_path / "raw", out, "--quiet")
    assert p.returncode == 1 and p.stderr.strip().endswith(f"; nothing was written to {out}"), p.stderr
    assert not out.exists()
    p = chdl("curate", tmp_path / "raw", out, "--quiet", "--bit-depth", "16")
    assert p.returncode == 0, p.stderr
    before = (out / "zarr.json").read_bytes()
    p = chdl("curate", tmp_path / "raw", out, "--quiet", "--bit-depth", "12", "--overwrite")
    assert p.returncode == 1 and p.stderr.strip().endswith(
        f"give the right --bit-depth; {out} is the dataset that was there before, untouched"), p.stderr
    assert (out / "zarr.json").read_bytes() == before


def test_a_run_being_recorded_now_is_refused_by_name(tmp_path):
    """A capture still writing the run (its manifest's writer is a live process of this host): its lanes still to
    come were curated as "never recorded; treated as missing", exit 0. A run whose writer is gone is curated."""
    import os
    import socket

    run = tmp_path / "raw" / "live"
    write_run(run, lanes=2)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="recording", writer={"pid": os.getpid(), "host": socket.gethostname()})
    (run / "manifest.json").write_text(json.dumps(manifest))
    p = chdl("curate", tmp_path / "raw", tmp_path / "d.zarr", "--quiet")
    assert p.returncode == 1 and p.stderr == (f"Error: {run}: chdl (pid {os.getpid()}) is recording it now (20 frames "
                                              "so far); curate it once that capture has ended\n"), p.stderr
    assert not (tmp_path / "d.zarr").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    manifest["writer"]["pid"] = int(dead.stdout)  # (a pid of a process that has ended: its writer was killed)
    (run / "manifest.json").write_text(json.dumps(manifest))
    p = chdl("curate", tmp_path / "raw", tmp_path / "d.zarr")
    assert p.returncode == 0 and "run is 'recording', not complete" in p.stderr, p.stderr
