"""`chdl curate` end to end through the real CLI: dataset contents, report, resume, workers, refusals,
and the bad-input list (each a one-line error naming the file, or a warning + report entry)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from chdl.cli import main
from chdl.dataset import (FLAG_ILLUMINATION, FLAG_MISSING, FLAG_RECONSTRUCTED, FLAG_VIBRATION, RECONSTRUCTION_MASK,
                          RECONSTRUCTION_METHODS, SPLIT_EXCLUDED, reconstruction_method,
                          DatasetIncompleteError, open_dataset)
from curation_helpers import T, psnr, write_run

FAULTS = {(0, 4): ("blur", 2.0), (1, 0): ("gain", 0.75), (2, 6): ("jitter", 5.0),
          (3, 2): ("blur", 2.0), (3, 5): ("blur", 2.0), (3, 8): ("gain", 1.3)}  # lane 3: 3 bad -> excluded


def _curate(*args, ok=True):
    r = CliRunner().invoke(main, ["curate", *map(str, args), "--quiet"])
    if ok:
        assert r.exit_code == 0, r.output + repr(r.exception)
    return r


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    truth = write_run(root / "run-a", lanes=6, faults=FAULTS, seed=1)
    return root, truth


@pytest.fixture(scope="module")
def curated(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "d.zarr"
    _curate(raw[0], out)
    return out


def test_dataset_contents(raw, curated):
    _, truth = raw
    ds = open_dataset(curated)
    assert ds.frames.shape == (6, T, 1, 120, 160) and ds.frames.dtype == np.uint8
    flags = ds.qc_flags & ~np.uint8(RECONSTRUCTION_MASK)
    assert flags[0, 4] == FLAG_VIBRATION | FLAG_RECONSTRUCTED
    assert flags[1, 0] == FLAG_ILLUMINATION | FLAG_RECONSTRUCTED
    assert flags[2, 6] == FLAG_VIBRATION | FLAG_RECONSTRUCTED
    # the method of each reconstruction is recorded beside the flags, and only for reconstructed frames
    methods = np.vectorize(lambda f: reconstruction_method(f) or "")(ds.qc_flags)
    assert all(methods[n, t] in RECONSTRUCTION_METHODS for n, t in ((0, 4), (1, 0), (2, 6)))
    assert ((methods != "") == ((ds.qc_flags & FLAG_RECONSTRUCTED) != 0)).all()
    assert (flags[3, [2, 5]] & FLAG_VIBRATION).all() and flags[3, 8] & FLAG_ILLUMINATION
    assert not (flags[3] & FLAG_RECONSTRUCTED).any()
    clean_frames = np.ones_like(flags, bool)
    for lane, t in FAULTS:
        clean_frames[lane, t] = False
    assert not flags[clean_frames].any()
    split = ds.split
    assert split[3] == SPLIT_EXCLUDED and set(split[[0, 1, 2, 4, 5]]) <= {0, 1}
    # lane blocks of 2: lanes (0,1), (2,3), (4,5) each wholly on one side; both sides used
    assert split[0] == split[1] and split[4] == split[5] and {0, 1} <= set(split)
    # reconstructions are close to the clean frame; originals kept
    assert psnr(ds.frames[0, 4, 0], truth[0, 4][1]) > 25
    orig = {(s, t): px for s, t, px in ds.originals()}
    assert set(orig) == {(0, 4), (1, 0), (2, 6)}
    np.testing.assert_array_equal(orig[0, 4][0], truth[0, 4][0])
    # excluded sequence stored as recorded
    np.testing.assert_array_equal(ds.frames[3, :, 0], np.stack([truth[3, t][0] for t in range(T)]))
    # per-sequence metadata and provenance
    assert list(ds.group["lane"][:]) == list(range(6)) and ds.attrs["runs"] == ["run-a"]
    np.testing.assert_allclose(ds.group["position_um"][0], 50.0 * np.arange(T))
    assert (ds.group["timestamp_ns"][:] > 0).all()
    prov = ds.attrs["provenance"]
    assert prov["command"].startswith("chdl curate") and prov["source_runs"][0].endswith("run-a")
    cfg = prov["config"]
    assert cfg["qc"]["floors"]["sharpness"] > 0 and cfg["max_bad_frames"] == 2
    assert set(cfg["run_thresholds"]["run-a"]) == set(ds.attrs["qc_score_names"])
    assert np.isfinite(ds.qc_scores).all()


def test_a_held_out_test_split_when_the_config_asks_for_one(raw, curated, tmp_path):
    """split.test_fraction deals whole lane blocks to a test split (code 3), which curate, the QC report and chdl info
    count; the frames and QC of every sequence are those of the dataset without it."""
    from chdl.dataset import SPLIT_TEST

    cfg = tmp_path / "split.yaml"
    cfg.write_text("split: {block_lanes: 1, val_fraction: 0.2, test_fraction: 0.4}\n")
    out = tmp_path / "t.zarr"
    r = _curate(raw[0], out, "--config", cfg)
    ds, before = open_dataset(out), open_dataset(curated)
    split = ds.split
    assert split[3] == SPLIT_EXCLUDED and (split == SPLIT_TEST).sum() == 2 and (split == 1).sum() == 1  # of 5 kept
    assert list(ds.indices("test")) == list(np.flatnonzero(split == SPLIT_TEST))
    assert set(ds.indices("all")) == {0, 1, 2, 4, 5}  # (all: every sequence not excluded, test included)
    assert f"({(split == 0).sum()} train, 1 val, 2 test, 1 excluded)" in r.output
    np.testing.assert_array_equal(ds.frames[:], before.frames[:])
    np.testing.assert_array_equal(ds.qc_flags, before.qc_flags)
    summary = json.loads(out.with_name("t.qc.json").read_text())
    assert summary["splits"]["test"] == 2 and "val 1, test 2, excluded 1" in out.with_name("t.qc.html").read_text()
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "splits       train 2, val 1, test 2, excluded 1  (lane blocks of 1, val 0.2, test 0.4, seed 0)" \
        in info.output, info.output
    assert "test" not in CliRunner().invoke(main, ["info", str(curated)]).output.split("splits")[1].split("\n")[0]
    # every usable sequence to test: the train split is empty, not "every sequence was excluded"
    cfg.write_text("split: {block_lanes: 1, val_fraction: 0.0, test_fraction: 1.0}\n")
    r = _curate(raw[0], tmp_path / "all.zarr", "--config", cfg)
    assert "(0 train, 0 val, 5 test, 1 excluded)" in r.output and "every sequence was excluded" not in r.output
    assert ("warning: the train split is empty (0 val, 5 test, 1 excluded sequences): chdl train refuses this dataset "
            "(chdl eval can still score it)") in r.output
    assert "excluded 1  (lane blocks of 1, val 0, test 1, seed 0)" in CliRunner().invoke(
        main, ["info", str(tmp_path / "all.zarr")]).output  # (val is said even when nothing went to it)
    # a test split asked for and too small to get one block: said, and counted as 0 (not left out of the counts)
    cfg.write_text("split: {block_lanes: 1, val_fraction: 0.5, test_fraction: 0.01}\n")
    r = _curate(raw[0], tmp_path / "few.zarr", "--config", cfg)
    assert "val, 0 test, 1 excluded)" in r.output
    assert "warning: split.test_fraction 0.01 asked for a test split, but no block of 1 lane(s) went to it" in r.output
    assert ", test 0, excluded 1" in CliRunner().invoke(main, ["info", str(tmp_path / "few.zarr")]).output


def test_report(curated):
    html = curated.with_name("d.qc.html").read_text()
    summary = json.loads(curated.with_name("d.qc.json").read_text())
    assert summary["splits"]["excluded"] == 1 and summary["flags"]["reconstructed"] == 3
    assert summary["excluded_sequences"][0]["sequence"] == 3 and summary["excluded_sequences"][0]["bad_frames"] == 3
    assert {(f["sequence"], f["t"]) for f in summary["flagged_frames"]} == set(FAULTS)
    # how each frame was rebuilt: per frame (the excluded sequence's were not) and counted per method
    by = {(f["sequence"], f["t"]): f["reconstructed_by"] for f in summary["flagged_frames"]}
    assert all((m is None) == (n == 3) and (m is None or m in RECONSTRUCTION_METHODS) for (n, _), m in by.items())
    assert sum(summary["reconstructed_by"].values()) == 3 and "not recorded" not in summary["reconstructed_by"]
    assert "Reconstructed frames by method" in html and "reconstructed by " in html
    assert set(summary["histograms"]) == set(summary["score_names"])
    assert all(h["thresholds"] for h in summary["histograms"].values())
    assert html.count("data:image/jpeg;base64,") >= 6 * 3  # neighbours, original, reconstruction
    assert html.count("<svg") == len(summary["score_names"]) and "Excluded sequences (1)" in html
    assert "src=\"http" not in html and "<script src" not in html  # self-contained


def test_refuses_to_overwrite(raw, curated, tmp_path):
    r = _curate(raw[0], curated, ok=False)
    assert r.exit_code == 1 and "already exists" in r.output and "--overwrite" in r.output
    other = tmp_path / "not-a-dataset"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        r = CliRunner().invoke(main, ["curate", str(raw[0]), str(other), "--quiet", *extra])
        assert r.exit_code == 1 and "not a" in r.output and (other / "precious.txt").exists()
    # a dataset that holds someone's files (a training run put inside it) is not deleted either
    import shutil

    holder = tmp_path / "holder.zarr"
    shutil.copytree(curated, holder)
    (holder / "run" / "checkpoints").mkdir(parents=True)
    (holder / "run" / "checkpoints" / "last.pt").write_bytes(b"weights")
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(holder), "--quiet", "--overwrite"])
    _one_line_error(r, f"{holder}: a dataset that also holds other files (run); refusing to delete them")
    assert (holder / "run" / "checkpoints" / "last.pt").read_bytes() == b"weights"


def test_overwrite_workers_and_resume_give_the_same_dataset(raw, curated, tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 2\n")
    ref = tmp_path / "ref.zarr"
    _curate(raw[0], ref, "--config", cfg)
    # two workers, and --overwrite over an existing dataset
    par = tmp_path / "par.zarr"
    _curate(raw[0], par, "--config", cfg)
    _curate(raw[0], par, "--config", cfg, "--workers", 2, "--overwrite")
    # interrupted after one shard, then resumed with the same arguments
    import curation.pipeline as pipeline

    real = pipeline._shard_task
    calls = []

    def flaky(task):
        if calls:
            raise KeyboardInterrupt
        calls.append(task[0])
        return real(task)

    res = tmp_path / "res.zarr"
    monkeypatch.setattr(pipeline, "_shard_task", flaky)
    r = _curate(raw[0], res, "--config", cfg, ok=False)
    assert r.exit_code != 0
    with pytest.raises(DatasetIncompleteError):
        open_dataset(res)
    monkeypatch.setattr(pipeline, "_shard_task", real)
    began = zarr.open_group(str(res), mode="r").attrs["provenance"]["curate_code"]
    assert began == pipeline._curate_code() and len(began) == 16
    # resumed by other code (a git pull between the two): allowed, and said, since the shards then mix
    monkeypatch.setattr(pipeline, "_curate_code", lambda: "0123456789abcdef")
    results, real_curate = [], pipeline.curate
    monkeypatch.setattr(pipeline, "curate", lambda *a, **k: results.append(real_curate(*a, **k)) or results[-1])
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(res), "--config", str(cfg), "--workers", "2"])
    assert r.exit_code == 0, r.output
    # the summary's rate is of this run's frames (it divided all of them, the resumed shard's too, by this run's time)
    done = results[0]
    assert done.shards_resumed == 1 and done.frames_written == done.n_frames - 2 * 10 > 0
    rate = float(re.search(r"; (\d+) frames/s", r.output).group(1))
    assert rate == pytest.approx(done.frames_written / done.seconds, abs=1)
    assert (f"warning: {res} was begun by other code (source digest {began}, now 0123456789abcdef: chdl.provenance); "
            "its shards so far were written by that code") in r.output
    # a different config does not resume silently
    for p in (ref, par, res):
        assert open_dataset(p).attrs["complete"]
    a, b, c = (zarr.open_group(str(p), mode="r") for p in (ref, par, res))
    names = ["frames", "qc_flags", "qc_scores", "split", "run_index", "lane", "position_um", "timestamp_ns"]
    for name in names:
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
        np.testing.assert_array_equal(a[name][:], c[name][:], err_msg=name)
    assert open_dataset(ref).originals().__len__() == open_dataset(res).originals().__len__() == 3
    strip = lambda g: {k: v for k, v in dict(g.attrs).items() if k not in ("provenance", "extra", "attributes_blake3")}
    assert strip(a) == strip(c)
    digests = lambda g: {k: v for k, v in g.attrs["attributes_blake3"].items() if k not in ("provenance", "extra")}
    assert digests(a) == digests(c) and len(digests(a)) > 10
    assert a.attrs["provenance"]["config"] == c.attrs["provenance"]["config"]
    assert json.loads(ref.with_name("ref.qc.json").read_text())["flags"] == \
        json.loads(res.with_name("res.qc.json").read_text())["flags"]


def test_incomplete_dataset_from_other_settings_is_not_resumed(raw, tmp_path, monkeypatch):
    import curation.pipeline as pipeline

    out = tmp_path / "x.zarr"
    monkeypatch.setattr(pipeline, "_shard_task", lambda task: (_ for _ in ()).throw(KeyboardInterrupt))
    _curate(raw[0], out, ok=False)
    monkeypatch.undo()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_bad_frames: 1\n")
    r = _curate(raw[0], out, "--config", cfg, ok=False)
    assert r.exit_code == 1 and "other inputs or settings" in r.output


def test_an_incomplete_dataset_begun_by_another_chdl_version_resumes_with_a_warning(raw, curated, tmp_path,
                                                                                     monkeypatch):
    """The version is part of the resume key: a curate begun by chdl 0.1.0 and interrupted was refused by 0.2.0 as
    "made from other inputs or settings (by chdl curate RAW OUT); rerun that command to resume" -- the command just
    run. The same inputs and settings under another version now resume, with a warning naming both versions."""
    import curation.pipeline as pipeline
    from chdl import __version__

    out = tmp_path / "x.zarr"
    monkeypatch.setattr(pipeline, "_shard_task", lambda task: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr("chdl.__version__", "0.0.1")  # (read at call time by the key and the dataset writer)
    _curate(raw[0], out, ok=False)
    monkeypatch.undo()
    assert json.loads((out / "zarr.json").read_text())["attributes"]["provenance"]["tool_version"] == "0.0.1"
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(out)])
    assert r.exit_code == 0, r.output
    assert f"warning: {out} was begun by chdl 0.0.1, this is chdl {__version__}; resuming it" in r.output
    np.testing.assert_array_equal(zarr.open_array(out / "frames", mode="r")[:],
                                  zarr.open_array(curated / "frames", mode="r")[:])


def test_subprocess_cli_and_progress(raw, tmp_path):
    out = tmp_path / "p.zarr"
    p = subprocess.run([sys.executable, "-m", "chdl", "curate", str(raw[0] / "run-a"), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "6 sequences" in p.stdout and "QC report" in p.stdout
    assert "frame/s" in p.stderr  # tqdm progress bar with rate


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

def _one_line_error(r, *needles):
    assert r.exit_code == 1, r.output
    msg = r.output.strip()
    assert msg.startswith("Error: ") and "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_empty_folder_and_not_a_recording(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(_curate(tmp_path / "empty", tmp_path / "o.zarr", ok=False), "empty", "empty folder")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    _one_line_error(_curate(tmp_path / "junk", tmp_path / "o.zarr", ok=False), "junk", "no recordings")
    _one_line_error(_curate(tmp_path / "nope", tmp_path / "o.zarr", ok=False), "nope", "no such")
    assert not (tmp_path / "o.zarr").exists()


def test_malformed_manifest(tmp_path):
    write_run(tmp_path / "raw" / "r", lanes=1)
    (tmp_path / "raw" / "r" / "manifest.json").write_text("{not json")
    _one_line_error(_curate(tmp_path / "raw", tmp_path / "o.zarr", ok=False), "manifest.json", "malformed")
    assert not (tmp_path / "o.zarr").exists()


def test_runs_of_different_sizes_or_formats(tmp_path):
    from curation.synthetic import SynthSpec

    write_run(tmp_path / "raw" / "a", lanes=1)
    write_run(tmp_path / "raw" / "b", lanes=1, spec=SynthSpec(height=96, width=128, step_px=8.0))
    _one_line_error(_curate(tmp_path / "raw", tmp_path / "o.zarr", ok=False), "b/manifest.json", "128x96", "differs")
    write_run(tmp_path / "raw2" / "a", lanes=1)
    write_run(tmp_path / "raw2" / "c", lanes=1, spec=SynthSpec(height=120, width=160, step_px=8.0, max_value=65535),
              fmt="Mono16")
    _one_line_error(_curate(tmp_path / "raw2", tmp_path / "o.zarr", ok=False), "c/manifest.json", "Mono16")
    assert not (tmp_path / "o.zarr").exists()


def test_bad_config(raw, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("qc: {floors: {sharpnes: 0.1}}\n")
    _one_line_error(_curate(raw[0], tmp_path / "o.zarr", "--config", cfg, ok=False), "c.yaml", "sharpnes")
    cfg.write_text("qc: [\n")
    _one_line_error(_curate(raw[0], tmp_path / "o.zarr", "--config", cfg, ok=False), "c.yaml", "malformed YAML")


def test_empty_validation_split_is_warned_at_curate_time(raw, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("split: {val_fraction: 0.0}\n")
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(tmp_path / "o.zarr"), "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.output
    assert "warning: the validation split is empty (5 train sequences): chdl train will run without validation" \
        in r.output
    assert "validation split is empty" not in _curate(raw[0], tmp_path / "p.zarr").output


def test_a_complete_run_whose_index_was_cut_short_says_how_many_frames_are_left_out(tmp_path):
    """manifest.json says complete with 40 frames, frames.jsonl holds 10 and a torn line: curate goes on with
    what the index holds, and the warning counts the frames it cannot curate."""
    run = tmp_path / "raw" / "r"
    write_run(run, lanes=4)
    lines = (run / "frames.jsonl").read_text().splitlines(keepends=True)
    (run / "frames.jsonl").write_text("".join(lines[:10]) + lines[10][:25])
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(tmp_path / "o.zarr")])
    assert r.exit_code == 0, r.output
    assert f"warning: {run / 'frames.jsonl'}: holds 10 of the 40 frames manifest.json counts (the index was cut " \
           "short); the other 30 are not curated" in r.output
    assert open_dataset(tmp_path / "o.zarr").n_sequences == 1


def test_an_empty_train_split_is_warned_as_unusable_for_training(raw, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("split: {val_fraction: 1.0}\n")
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(tmp_path / "o.zarr"), "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.output
    assert "warning: the train split is empty (5 val, 1 excluded sequences): chdl train refuses this dataset" in r.output
    assert "validation split is empty" not in r.output


def test_usable_runs_with_damage_give_warnings_and_report_entries(tmp_path):
    """Truncated and corrupt frame files, a dropped frame, a never-recorded position, a frame of the
    wrong size, a run cut off mid-lane: the dataset is complete, the damage is reconstructed or
    excluded, and each problem is named in the report."""
    run = tmp_path / "raw" / "r"
    truth = write_run(run, lanes=4, drop={(1, 3)}, skip={(2, 5)}, close="incomplete")
    frames = run / "frames"
    f_trunc = frames / "000002.png"  # lane 0, t 2
    f_trunc.write_bytes(f_trunc.read_bytes()[:200])
    f_corrupt = frames / "000007.png"  # lane 0, t 7
    f_corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    # a record claiming another size (lane 3, t 9 is the last frame: index 37 after one drop... find it)
    lines = (run / "frames.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    i = next(k for k, r in enumerate(recs) if r["lane"] == 3 and r["position_index"] == 1)
    recs[i]["width"] = 320
    # cut the run off after lane 3 position 6 (a torn last line too)
    keep = [r for r in recs if not (r["lane"] == 3 and r["position_index"] > 6)]
    (run / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep) + '{"index": 9')
    out = tmp_path / "o.zarr"
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(out)])
    assert r.exit_code == 0, r.output
    ds = open_dataset(out)
    flags = ds.qc_flags
    for lane, t in ((0, 2), (0, 7), (1, 3), (2, 5)):
        assert flags[lane, t] & ~np.uint8(RECONSTRUCTION_MASK) == FLAG_MISSING | FLAG_RECONSTRUCTED, (lane, t, flags[lane])
    assert psnr(ds.frames[0, 2, 0], truth[0, 2][1]) > 25
    assert ds.split[3] == SPLIT_EXCLUDED  # 1 wrong-size + 3 never recorded
    assert (flags[3, 7:] == FLAG_MISSING).all() and not ds.frames[3, 7:].any()
    s = json.loads(out.with_name("o.qc.json").read_text())
    text = "\n".join(s["warnings"])
    assert str(f_trunc) in text and "truncated or corrupt" in text
    assert str(f_corrupt) in text
    assert "position 5 never recorded" in text
    assert "lane 3 positions 7-9 (3 of 10) never recorded; treated as missing" in text  # (it was three lines)
    # the record's own size is named at the index (it blamed the PNG, which is the run's size)
    assert (f"{run / 'frames.jsonl'}: its record gives size 320x120, not the run's 160x120; frame {recs[i]['index']} "
            "(lane 3, position 1) treated as missing") in text
    assert "not complete" in text and "torn" in text
    assert {u["t"] for u in s["unreadable_frames"]} == {2, 7}
    ex = s["excluded_sequences"][0]
    assert ex["lane"] == 3 and ex["bad_frames"] == 4 and "never recorded" in ex["missing_reasons"]["8"]
    assert f"warning: {f_trunc}" in r.output
    # --quiet: the same problems are in the report, none of them on stderr (shard warnings included)
    rq = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(tmp_path / "q.zarr"), "--quiet"])
    assert rq.exit_code == 0 and "warning:" not in rq.output and "7 warning(s); see the report" in rq.output, rq.output
    assert json.loads((tmp_path / "q.qc.json").read_text())["warnings"] == s["warnings"]


def test_no_usable_lane_sequence(tmp_path):
    run = tmp_path / "r"
    write_run(run, lanes=1)
    m = json.loads((run / "manifest.json").read_text())
    m["plan"]["positions"] = 5
    m["plan"]["positions_um"] = m["plan"]["positions_um"][:5]
    (run / "manifest.json").write_text(json.dumps(m))
    _one_line_error(_curate(run, tmp_path / "o.zarr", ok=False), "manifest.json", "5 positions per lane")


def test_malformed_frame_index(tmp_path):
    run = tmp_path / "r"
    write_run(run, lanes=1)
    lines = (run / "frames.jsonl").read_text().splitlines()
    lines[3] = lines[3][:20]  # a cut line in the middle (not the torn tail a kill -9 leaves)
    (run / "frames.jsonl").write_text("\n".join(lines) + "\n")
    _one_line_error(_curate(run, tmp_path / "o.zarr", ok=False), "frames.jsonl:4", "malformed")
    assert not (tmp_path / "o.zarr").exists()


def _edit_manifest(run, edit):
    m = json.loads((run / "manifest.json").read_text())
    edit(m)
    (run / "manifest.json").write_text(json.dumps(m))


def test_metadata_sizes_are_checked_against_the_disk(tmp_path):
    """A manifest (and records) claiming 1,000,000 x 1,000,000 frames is refused from the PNG headers on
    disk before anything is allocated; a plan of 10^9 positions per lane does not drive any loop."""
    run = tmp_path / "r"
    write_run(run, lanes=1)
    _edit_manifest(run, lambda m: m["settings"].update(width=10**6, height=10**6))
    _one_line_error(_curate(run, tmp_path / "o.zarr", ok=False), "000000.png: frame is 160x120 on disk",
                    "says 1000000x1000000")
    lines = [json.loads(x) for x in (run / "frames.jsonl").read_text().splitlines()]
    (run / "frames.jsonl").write_text("".join(json.dumps({**r, "width": 10**6, "height": 10**6}) + "\n" for r in lines))
    _one_line_error(_curate(run, tmp_path / "o.zarr", ok=False), "frame is 160x120 on disk")
    assert not (tmp_path / "o.zarr").exists()
    run2 = tmp_path / "r2"
    write_run(run2, lanes=2)

    def huge_plan(m):
        m["plan"]["positions"] = 10**9
        del m["plan"]["positions_um"]
    _edit_manifest(run2, huge_plan)
    from curation.config import CurateConfig
    from curation.plan import build_plan

    plan = build_plan(run2, CurateConfig())  # returns at once (was an endless loop over 10^8 windows per lane)
    assert [(s.lane, s.window) for s in plan.sequences] == [(0, 0), (1, 0)]


@pytest.mark.parametrize("kind", ["relative", "absolute", "symlink"])
def test_frame_file_outside_the_run_is_refused(tmp_path, kind):
    import os

    write_run(tmp_path / "other", lanes=1)
    run = tmp_path / "raw" / "r"
    write_run(run, lanes=1)
    lines = (run / "frames.jsonl").read_text().splitlines()
    if kind == "symlink":
        (run / "frames" / "000003.png").unlink()
        os.symlink(tmp_path / "other" / "frames" / "000003.png", run / "frames" / "000003.png")
    else:
        target = "../../../other/frames/000003.png" if kind == "relative" else str(tmp_path / "other/frames/000003.png")
        obj = json.loads(lines[3])
        obj["file"] = target
        lines[3] = json.dumps(obj)
        (run / "frames.jsonl").write_text("\n".join(lines) + "\n")
    r = _curate(tmp_path / "raw", tmp_path / "o.zarr", ok=False)
    _one_line_error(r, "outside the run folder")
    assert not (tmp_path / "o.zarr").exists()


def test_wrong_types_in_frames_jsonl_through_the_cli(tmp_path):
    run = tmp_path / "r"
    write_run(run, lanes=1)
    raw = (run / "frames.jsonl").read_bytes()
    (run / "frames.jsonl").write_bytes(raw.replace(b'"lane":0', b'"lane":"one"', 1))
    _one_line_error(_curate(run, tmp_path / "o.zarr", ok=False), "frames.jsonl:1: field 'lane' must be an integer")
    (run / "frames.jsonl").write_bytes(raw.replace(b'"position_um":50.0', b'"position_um":NaN', 1))
    _one_line_error(_curate(run, tmp_path / "o.zarr", ok=False), "frames.jsonl:2: field 'position_um'", "NaN")
    (run / "frames.jsonl").write_bytes(raw.replace(b'"status":"ok"', b'"status":"\xffok"', 1))
    _one_line_error(_curate(run, tmp_path / "o.zarr", ok=False), "frames.jsonl:1:", "not UTF-8")
    assert not (tmp_path / "o.zarr").exists()


def _tmpfs_available() -> bool:
    import shutil

    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="needs unshare -rm and tmpfs mounts in a user namespace")
@pytest.mark.parametrize("size", ["24k", "300k"])  # full while creating the layout / while writing shards
def test_disk_full_is_one_line_and_the_rerun_resumes(tmp_path, size):
    """A real full disk: a small tmpfs in a private mount namespace. The error is one line naming the
    dataset; after the tmpfs is grown the same command resumes (or starts afresh) and completes."""
    import shlex

    write_run(tmp_path / "raw" / "r", lanes=2, faults={(0, 4): ("blur", 2.0)})
    (tmp_path / "c.yaml").write_text("sequences_per_shard: 1\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "chdl", "curate", tmp_path / "raw", mnt / "d.zarr",
                                                 "--config", tmp_path / "c.yaml", "--quiet"])
    script = (f"mount -t tmpfs -o size={size} tmpfs {mnt} && {cmd} 2>{tmp_path}/err1; echo rc1=$?; "
              f"mount -o remount,size=4M {mnt} && {cmd} 2>{tmp_path}/err2; echo rc2=$?; "
              f"cp -r {mnt}/d.zarr {tmp_path}/kept.zarr")
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    err1 = (tmp_path / "err1").read_text().strip()
    assert "rc1=1" in p.stdout and err1.count("\n") == 0, err1
    assert err1.startswith(f"Error: {mnt / 'd.zarr'}") and "No space left on device" in err1, err1
    assert "rc2=0" in p.stdout, (tmp_path / "err2").read_text()
    assert open_dataset(tmp_path / "kept.zarr").attrs["complete"]


@pytest.mark.parametrize("text,needle", [
    ("qc:\n  floors: {sharpness: .nan}\n", "qc.floors.sharpness: must be a finite number, got nan"),
    ("qc:\n  z: .inf\n", "qc.z: must be a finite number, got inf"),
    ("split:\n  val_fraction: .nan\n", "split.val_fraction: must be a finite number, got nan"),
])
def test_nan_in_a_qc_config_is_refused_with_the_key(raw, tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    _one_line_error(_curate(raw[0], tmp_path / "o.zarr", "--config", cfg, ok=False), f"{cfg}: {needle}")
    assert not (tmp_path / "o.zarr").exists()


def test_a_layout_whose_creation_was_cut_off_is_created_afresh(raw, curated, tmp_path):
    """What versions before atomic creation left when killed while creating (the group and some arrays,
    no shard_done): the rerun creates the dataset afresh instead of failing with KeyError forever."""
    out = tmp_path / "d.zarr"
    _curate(raw[0], out)
    g = zarr.open_group(str(out), mode="r+")
    for name in ("shard_done", "timestamp_ns", "position_um", "originals", "originals_index"):
        del g[name]
    g.attrs["complete"] = False
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(out)])
    assert r.exit_code == 0 and "creation was cut off before any shard was written" in r.output, r.output
    a, b = zarr.open_group(str(curated), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ("frames", "qc_flags", "split", "timestamp_ns"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    g = zarr.open_group(str(out), mode="r+")
    del g["frames"]  # a dataset with shards written but damaged is not silently replaced
    g.attrs["complete"] = False
    _one_line_error(_curate(raw[0], out, ok=False), "not a chdl dataset to resume (malformed dataset (missing arrays: frames))",
                    "use --overwrite")
    # a folder that is not a zarr group: --overwrite would refuse to delete it, so it is not suggested
    other = tmp_path / "notzarr"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    _one_line_error(_curate(raw[0], other, ok=False), "choose another output path (--overwrite never deletes")
    assert "use --overwrite" not in _curate(raw[0], other, ok=False).output


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_an_interrupted_curate_says_so_in_one_line_and_the_rerun_resumes(tmp_path, sig):
    import os
    import signal
    import time

    write_run(tmp_path / "raw" / "r", lanes=16)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 1\n")
    out = tmp_path / "d.zarr"
    cmd = [sys.executable, "-m", "chdl", "curate", str(tmp_path / "raw"), str(out), "--config", str(cfg), "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "zarr.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    # Ctrl-C reaches the whole process group (the workers too); `kill` reaches the main process only
    if sig == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Error" not in err, err
    assert err.strip().splitlines()[-1] == (f"interrupted: {out} keeps the shards finished so far; rerun the same "
                                            "command to resume"), err
    rerun = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    verify = subprocess.run([sys.executable, "-m", "chdl", "verify", str(out), "--quiet"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_an_interrupt_before_the_dataset_exists_says_nothing_was_written(tmp_path):
    """Ctrl-C while the run baselines are measured (before OUT is created) said "OUT keeps the shards finished so
    far; rerun the same command to resume" about a dataset that did not exist."""
    import os
    import signal

    write_run(tmp_path / "raw" / "r", lanes=200)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("qc:\n  calibration_sequences: 200\n")  # seconds of measuring before the dataset is created
    out = tmp_path / "d.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "curate", str(tmp_path / "raw"), str(out), "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = proc.stderr.readline()
    assert first.startswith("measuring run baselines on 200 sequences"), first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and not out.exists(), err
    assert err.strip().splitlines()[-1] == f"interrupted before {out} was created; nothing was written", err


def test_resuming_with_other_arguments_names_the_command_that_made_the_dataset(tmp_path, monkeypatch):
    """It said only "made from other inputs or settings; rerun with the original arguments" (which ones?)."""
    from chdl.dataset import DatasetWriter

    write_run(tmp_path / "raw" / "r", lanes=2)
    out = tmp_path / "d.zarr"
    DatasetWriter.create(out, n_sequences=2, frames_per_sequence=T, channels=1, height=8, width=8,
                         provenance={"curate_key": "another", "command": "chdl curate raw d.zarr --config mine.yaml"})
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(out), "-q"])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == (
        f"Error: {out}: an incomplete dataset made from other inputs or settings (by chdl curate raw d.zarr "
        "--config mine.yaml); rerun that command to resume, or use --overwrite to start anew")
    # read from another folder, the hint says where its relative paths hold (it printed them bare)
    made_in = zarr.open_group(str(out), mode="r").attrs["provenance"]["cwd"]
    assert made_in == os.getcwd()
    with pytest.raises(DatasetIncompleteError, match=r"rerun the command that made it \(chdl curate raw d\.zarr"):
        open_dataset(out)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(DatasetIncompleteError, match=rf"rerun the command that made it \(in {re.escape(made_in)}: "
                                                     r"chdl curate raw d\.zarr --config mine\.yaml\) to resume"):
        open_dataset(out)


def test_a_second_curate_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    """Two curates on one OUT both exited 0: the second resumed (or, with --overwrite, replaced) the dataset the first
    was writing, and the first printed counts of a dataset that was no longer on disk."""
    import os
    import time

    write_run(tmp_path / "raw" / "r", lanes=200)
    out = tmp_path / "d.zarr"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 4\n")
    first = subprocess.Popen([sys.executable, "-m", "chdl", "curate", str(tmp_path / "raw"), str(out), "--config",
                              str(cfg), "-q"], stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lock = tmp_path / ".d.zarr.chdl-writer.lock"
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    for extra in ([], ["--overwrite"]):
        second = _curate(tmp_path / "raw", out, "--config", str(cfg), *extra, ok=False)
        _one_line_error(second, f"{out}: in use by another chdl process writing it (pid {first.pid}); wait for it")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert not lock.exists()  # removed by the first when it ended
    assert _curate(tmp_path / "raw", out, "--config", str(cfg), "--overwrite").exit_code == 0  # free again


def test_info_finds_a_missing_original(curated, tmp_path):
    """The original of a reconstructed frame deleted: `chdl verify` named it, `chdl info` said every shard file was
    present (the listing alone does not say which originals a shard has; the checksum record does)."""
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(curated, bad)
    chunk = next(p for p in sorted((bad / "originals").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    key = chunk.relative_to(bad).as_posix()
    r = CliRunner().invoke(main, ["info", str(bad)])
    assert r.exit_code == 1 and "integrity    DAMAGED: 1 shard file(s) missing" in r.output, r.output
    assert r.output.endswith(f"Error: {bad}: damaged: 1 shard file(s) missing (first: {key})\n"), r.output


def test_out_as_a_file_url(raw, tmp_path):
    """docs/dataset-format.md allows a file:// URL: curate failed creating it ('No such file or directory') while
    info and verify read one."""
    r = CliRunner().invoke(main, ["curate", str(raw[0]), f"file://{tmp_path}/u.zarr", "--quiet"])
    assert r.exit_code == 0, r.output
    assert open_dataset(tmp_path / "u.zarr").n_sequences == 6 and (tmp_path / "u.qc.html").is_file()


def test_an_out_that_is_a_symlink_is_written_through_and_odd_names_are_handled(raw, curated, tmp_path, monkeypatch):
    """--overwrite through a symlinked OUT replaced the link by a new folder (the new dataset on the small disk, the
    old one left stale where the link pointed). A name that is not UTF-8 is refused before any work (curate wrote
    every shard, then failed on the report, every rerun); a quoted "~/x.zarr" made a folder named "~"; a run
    folder inside RAW named in Latin-1 is written into the report as an escape (acquisition.files.write_text)."""
    import shutil

    big = tmp_path / "big"
    big.mkdir()
    shutil.copytree(curated, big / "d.zarr")
    (tmp_path / "link.zarr").symlink_to(big / "d.zarr")
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(tmp_path / "link.zarr"), "--overwrite", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link.zarr").is_symlink() and (big / "d.qc.html").is_file()
    assert not (tmp_path / "link.qc.html").exists() and open_dataset(tmp_path / "link.zarr").n_sequences == 6
    assert not list(tmp_path.glob(".link*")) and sorted(p.name for p in big.iterdir()) == [
        "d.qc.html", "d.qc.json", "d.zarr"]
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(tmp_path / "lat\udce4.zarr"), "--quiet"])
    assert r.exit_code == 2 and "lat\\udce4.zarr: the name is not valid UTF-8 (bytes of another encoding); " \
        "rename it" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "link.zarr"]
    (tmp_path / "to-latin.zarr").symlink_to(tmp_path / "lat\udce4.zarr")  # through a link, the same refusal
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(tmp_path / "to-latin.zarr"), "--quiet"])
    assert r.exit_code == 2 and "lat\\udce4.zarr: the name is not valid UTF-8" in r.output, r.output
    (tmp_path / "to-latin.zarr").unlink()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    latin = tmp_path / "raw" / "lauf-\udce4"
    shutil.copytree(raw[0] / "run-a", latin)
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), "~/h.zarr", "--quiet"])
    assert r.exit_code == 0, r.output
    assert open_dataset(tmp_path / "home" / "h.zarr").n_sequences == 6 and not (tmp_path / "~").exists()
    assert "lauf-\\udce4" in (tmp_path / "home" / "h.qc.json").read_text()  # (JSON's escape)


def test_an_interrupted_overwrite_keeps_the_replaced_dataset_until_the_resume_completes(tmp_path):
    """Ctrl-C during `curate --overwrite` said "rerun the same command to resume", but that command (with --overwrite)
    starts again; the recorded command carried --overwrite too. The replaced dataset waits aside meanwhile."""
    import os
    import signal
    import time

    write_run(tmp_path / "raw" / "r", lanes=200)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 1\n")
    out = tmp_path / "d.zarr"
    _curate(tmp_path / "raw", out, "--config", cfg)
    previous = tmp_path / ".d.zarr.previous"
    cmd = [sys.executable, "-m", "chdl", "curate", str(tmp_path / "raw"), str(out), "--config", str(cfg)]
    proc = subprocess.Popen(cmd + ["--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not previous.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"interrupted: {out} keeps the shards finished so far; rerun it without "
                                            "--overwrite to resume (the dataset it replaces is kept aside until this "
                                            "one is complete)"), err
    assert previous.is_dir() and open_dataset(previous).n_sequences == 200
    r = CliRunner().invoke(main, ["info", str(out)])
    assert f"rerun the command that made it (chdl curate {tmp_path / 'raw'} {out} --config {cfg}) to resume" in r.output
    resumed = subprocess.run(cmd + ["-q"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not previous.exists() and open_dataset(out).n_sequences == 200


def test_warnings_name_files_as_the_command_named_them(tmp_path):
    """With RAW given as a relative path, a frame never recorded was named relative (the plan's warning) and a corrupt
    one absolute (the worker's)."""
    run = tmp_path / "raw" / "r"
    write_run(run, lanes=2, skip={(1, 5)})
    (run / "frames" / "000007.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)  # decodes in the worker only
    p = subprocess.run([sys.executable, "-m", "chdl", "curate", "raw", "o.zarr"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    warnings = [ln for ln in (p.stdout + p.stderr).replace("\r", "\n").splitlines() if ln.startswith("warning: ")]
    assert any(ln.startswith("warning: raw/r/frames/000007.png: ") for ln in warnings), warnings
    assert any(ln.startswith("warning: raw/r/frames.jsonl: lane 1 position 5 never recorded") for ln in warnings), warnings
    assert not any(str(tmp_path) in ln for ln in warnings), warnings
    report = json.loads((tmp_path / "o.qc.json").read_text())["warnings"]  # the report names them the same way
    assert [w.split(":")[0] for w in report] == ["raw/r/frames.jsonl", "raw/r/frames/000007.png"], report


def test_a_failed_or_interrupted_overwrite_keeps_the_old_report(raw, tmp_path):
    """--overwrite deleted the old QC report first, even when the old dataset was then kept or put back (a wrong
    --bit-depth, a Ctrl-C while measuring the baselines); the dataset's report_html then named a missing file. And the
    interrupt said "OUT keeps the shards finished so far; rerun without --overwrite to resume" about the untouched
    old dataset, which that rerun then refused as complete."""
    import os
    import signal

    from curation_helpers import SynthSpec

    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=4095)
    write_run(tmp_path / "raw16" / "a", lanes=2, spec=spec, fmt="Mono16", bit_depth=12)
    out = tmp_path / "d.zarr"
    _curate(tmp_path / "raw16", out)
    html, js = tmp_path / "d.qc.html", tmp_path / "d.qc.json"
    before = html.read_bytes(), js.read_bytes()
    r = _curate(tmp_path / "raw16", out, "--bit-depth", "8", "--overwrite", ok=False)
    assert r.exit_code == 1 and "above max_value 255" in r.output, r.output
    assert (html.read_bytes(), js.read_bytes()) == before and open_dataset(out).attrs["max_value"] == 4095

    write_run(tmp_path / "raw" / "r", lanes=200)
    big = tmp_path / "big.zarr"
    (tmp_path / "one.yaml").write_text("sequences_per_shard: 50\n")
    _curate(tmp_path / "raw", big, "--config", tmp_path / "one.yaml")
    report = (tmp_path / "big.qc.json").read_bytes()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 50\nqc:\n  calibration_sequences: 200\n")  # seconds of baselines
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "curate", str(tmp_path / "raw"), str(big), "--config",
                             str(cfg), "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = proc.stderr.readline()
    assert first.startswith("measuring run baselines on 200 sequences"), first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"interrupted before {big} was replaced; it is as it was, and nothing was "
                                            "written"), err
    assert (tmp_path / "big.qc.json").read_bytes() == report and open_dataset(big).n_sequences == 200


def test_out_must_name_a_folder_of_its_own_and_not_share_a_report(raw, curated, tmp_path):
    """`chdl curate RAW .` ended in a traceback (an empty working folder would have been removed as "an empty
    folder"); `x` after `x.zarr` silently replaced x.zarr's report (both report to x.qc.html)."""
    import os
    import shutil

    work = tmp_path / "w"
    work.mkdir()
    for name in (".", ".."):
        r = subprocess.run([sys.executable, "-m", "chdl", "curate", str(raw[0]), name, "-q"], cwd=work,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "OUT must name the dataset's own folder" in r.stderr or "inside" in r.stderr, r.stderr
    assert work.is_dir() and os.listdir(work) == []
    shutil.copytree(curated, tmp_path / "d.zarr")
    r = _curate(raw[0], tmp_path / "d", ok=False)
    _one_line_error(r, f"{tmp_path / 'd'}: its QC report d.qc.html would replace that of the dataset "
                       f"{tmp_path / 'd.zarr'}")
    assert not (tmp_path / "d").exists()
    # inside a recording (a dataset and its report among a camera's files) or inside another dataset: capture
    # refuses to record there, and curate wrote there
    run = tmp_path / "raw"
    shutil.copytree(raw[0] / "run-a", run)
    before = sorted(p.name for p in run.iterdir())
    r = _curate(run, run / "w.zarr", ok=False)
    _one_line_error(r, f"{run / 'w.zarr'}: inside the recording {run} (a recording's folder holds its own files "
                       "only: a recording nested in it is never curated); choose another output path")
    assert sorted(p.name for p in run.iterdir()) == before
    r = _curate(run, tmp_path / "d.zarr" / "sub" / "e.zarr", ok=False)
    _one_line_error(r, f"inside the zarr store {tmp_path / 'd.zarr'} (a curated dataset)")
    assert not (tmp_path / "d.zarr" / "sub").exists()


def test_a_shard_size_beyond_the_dataset_is_one_shard_and_beyond_memory_is_refused(raw, tmp_path, monkeypatch):
    """sequences_per_shard: 100000 allocated a 27.9 GiB buffer (traceback, an incomplete dataset that the resume
    crashed on again). A shard now holds at most the whole dataset; shards that cannot fit in memory are refused
    before anything is written."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 1000000000\n")
    _curate(raw[0], tmp_path / "o.zarr", "--config", cfg)
    ds = open_dataset(tmp_path / "o.zarr")
    assert ds.attrs["sequences_per_shard"] == 6 and ds.attrs["n_shards"] == 1
    import curation.memory

    monkeypatch.setattr(curation.memory, "available_memory", lambda: 2**20)  # 1 MiB
    r = _curate(raw[0], tmp_path / "m.zarr", "--config", cfg, ok=False)
    _one_line_error(r, "sequences_per_shard 1000000000: 1 worker(s) holding shards of 6 sequences of 10 160x120 "
                       "frames need 2.2 MiB of memory, 1.0 MiB available: set a smaller sequences_per_shard")
    assert not (tmp_path / "m.zarr").exists()


def test_a_report_that_cannot_be_written_is_named_not_its_temporary(raw, tmp_path):
    (tmp_path / "rep.qc.html").mkdir()
    r = _curate(raw[0], tmp_path / "rep.zarr", ok=False)
    _one_line_error(r, f"{tmp_path / 'rep.qc.html'}: cannot write (Is a directory)")
    assert ".tmp" not in r.output and not (tmp_path / ".rep.qc.html.tmp").exists()


def test_every_sequence_excluded_is_warned_as_such(raw, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("qc: {floors: {sharpness: 0, misregistration_px: 0, brightness: 0, contrast: 0, shading: 0, "
                   "banding: 0}, z: 0, z_sequence: 0}\nmax_bad_frames: 0\n")
    r = CliRunner().invoke(main, ["curate", str(raw[0]), str(tmp_path / "o.zarr"), "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.output
    assert "warning: every sequence was excluded (6: more than max_bad_frames" in r.output, r.output
    assert "lower split.val_fraction" not in r.output


def test_info_on_a_damaged_dataset_says_its_counts_are_not_reliable(curated, tmp_path):
    """With qc_flags' file gone, `chdl info` printed the flag counts read as zeros beside the DAMAGED line."""
    import shutil

    bad = tmp_path / "bad.zarr"
    shutil.copytree(curated, bad)
    (bad / "qc_flags" / "c" / "0" / "0").unlink()
    r = CliRunner().invoke(main, ["info", str(bad)])
    assert r.exit_code == 1
    qc_line = next(ln for ln in r.output.splitlines() if ln.startswith("qc "))
    assert qc_line.endswith("(NOT RELIABLE: shard files of these arrays are missing, read as zeros)"), r.output
    j = CliRunner().invoke(main, ["info", str(bad), "--json"])
    assert json.loads(j.output[:j.output.rindex("}") + 1])["integrity"]["counts_unreliable"] is True
    ok = CliRunner().invoke(main, ["info", str(curated)])
    assert ok.exit_code == 0 and "NOT RELIABLE" not in ok.output


def test_a_recording_that_vanishes_mid_run_fails_the_run_and_the_rerun_resumes(tmp_path, monkeypatch):
    """A network mount dropped (or the folder moved) during curate: every later frame was "treated as missing" and
    curate finished a complete dataset of blanks, exit 0, that `chdl verify` passed. Now the shard fails, the command
    says so in one line, and once the folder is back the rerun resumes."""
    import shutil

    from curation import pipeline

    raw = tmp_path / "raw"
    write_run(raw / "r", lanes=4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 1\n")
    out = tmp_path / "d.zarr"
    real, calls = pipeline._shard_task, []

    def vanishing(task):
        calls.append(task)
        if len(calls) == 2:  # (in-process: --workers 1) before the second shard: the folder is gone
            shutil.move(raw / "r" / "frames", tmp_path / "away")
        return real(task)

    monkeypatch.setattr(pipeline, "_shard_task", vanishing)
    r = _curate(raw, out, "--config", cfg, "--workers", "1", ok=False)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        f"Error: {raw / 'r' / 'frames'}: the recording's folder is gone (moved, deleted or unmounted) while it was being "
        f"curated; {out} keeps the shards finished so far: put the recording back and rerun the same command to resume")
    assert "incomplete dataset" in CliRunner().invoke(main, ["info", str(out)]).output
    shutil.move(tmp_path / "away", raw / "r" / "frames")
    monkeypatch.setattr(pipeline, "_shard_task", real)
    _curate(raw, out, "--config", cfg, "--workers", "1")
    assert not (zarr.open_array(out / "qc_flags", mode="r")[:] & FLAG_MISSING).any()


@pytest.mark.parametrize("created", [True, False])
def test_an_object_store_that_stops_answering_mid_run_is_one_line_saying_the_rerun_resumes(tmp_path, monkeypatch,
                                                                                           created):
    """A moto S3 server stopped mid-curate gave "s3://chdl/d.zarr: the object store cannot be used
    (EndpointConnectionError: ...)" and no word that the dataset begun there resumes; before OUT exists there is
    nothing to resume, and the line says none."""
    from botocore.exceptions import EndpointConnectionError

    from curation import pipeline

    def store_gone(raw, out, cfg, state, **kw):
        state["created"] = created
        raise RuntimeError("zarr store") from EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/d.zarr/x")

    monkeypatch.setattr(pipeline, "curate", store_gone)
    r = CliRunner().invoke(main, ["curate", str(tmp_path), "s3://b/d.zarr", "-q"])
    assert r.exit_code == 1, r.output
    line = r.output.strip()
    assert "\n" not in line and line.startswith("Error: ")
    assert "the object store cannot be used (EndpointConnectionError: Could not connect to the endpoint URL" in line
    assert line.endswith("; s3://b/d.zarr keeps the shards finished so far: rerun the same command to resume once "
                         "the store answers") == created, line


def test_warnings_beyond_the_first_ones_are_counted_in_one_line(tmp_path, monkeypatch):
    """A recording with thousands of unreadable frames printed a warning line for each (4786 in a trial); the
    first SHOWN_WARNINGS are printed, the rest counted in one line that points to the report, which lists all."""
    from curation import pipeline

    run = tmp_path / "raw" / "r"
    write_run(run, lanes=4)
    for i in range(7):
        (run / "frames" / f"{i:06d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    monkeypatch.setattr(pipeline, "SHOWN_WARNINGS", 3)
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(tmp_path / "o.zarr")])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.output.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 4 and all("truncated or corrupt" in w for w in warned[:3]), r.output
    assert warned[3] == (f"warning: 4 more warnings not shown (7 in all; the QC report lists every one: "
                         f"{tmp_path / 'o.qc.html'})")
    assert sum("truncated or corrupt" in w for w in json.loads((tmp_path / "o.qc.json").read_text())["warnings"]) == 7


def test_frames_without_an_image_are_treated_as_missing(tmp_path):
    """A lane pass with the lens capped and one frame with the lamp off passed QC (which compares frames with each
    other) into the dataset as black training sequences; now they are missing frames, named in the report: the
    capped pass is excluded, the single frame reconstructed."""
    import cv2

    run = tmp_path / "raw" / "r"
    truth = write_run(run, lanes=4)
    for lane, t in [(1, t) for t in range(T)] + [(2, 4)]:
        cv2.imwrite(str(run / "frames" / f"{lane * T + t:06d}.png"), np.zeros_like(truth[lane, t][0]))
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(tmp_path / "o.zarr")])
    assert r.exit_code == 0, r.output
    ds = open_dataset(tmp_path / "o.zarr")
    assert ds.split[1] == SPLIT_EXCLUDED and (ds.qc_flags[1] == FLAG_MISSING).all()
    assert ds.qc_flags[2, 4] & ~np.uint8(RECONSTRUCTION_MASK) == FLAG_MISSING | FLAG_RECONSTRUCTED
    assert psnr(ds.frames[2, 4, 0], truth[2, 4][1]) > 25
    assert not (ds.qc_flags[[0, 3]] & FLAG_MISSING).any()
    s = json.loads((tmp_path / "o.qc.json").read_text())
    blank = f"{run / 'frames' / '000024.png'}: no image (its pixels' standard deviation is 0.00% of full scale, under 1%"
    assert any(u["problem"].startswith(blank) for u in s["unreadable_frames"]), s["unreadable_frames"]
    assert len(s["unreadable_frames"]) == T + 1
    excluded = next(e for e in s["excluded_sequences"] if e["lane"] == 1)  # (its table said only "missing")
    assert len(excluded["missing_reasons"]) == T and all("no image" in w for w in excluded["missing_reasons"].values())
    assert f"warning: {blank}" in r.output


def test_a_frame_this_user_may_not_read_stops_the_run_instead_of_becoming_a_missing_frame(tmp_path, monkeypatch):
    """On a shared server a frame file of another user's (mode 600) was 'missing' and reconstructed into the
    dataset, exit 0 (emulated: os.access says no, as it does for such a file; root may read anything)."""
    import os

    run = tmp_path / "raw" / "r"
    write_run(run, lanes=4)
    private = run / "frames" / "000014.png"
    real, real_read = os.access, np.fromfile

    def fromfile(file, *a, **kw):  # what reading another user's 0600 file gives
        if str(file) == str(private):
            raise PermissionError(13, "Permission denied", str(file))
        return real_read(file, *a, **kw)

    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(private) else real(p, mode, **kw))
    monkeypatch.setattr(np, "fromfile", fromfile)
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(tmp_path / "o.zarr"), "--workers", "1", "-q"])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines()[-1].startswith(
        f"Error: {private}: this user may not read it (permissions; another user's file?), which does not make it a "
        "missing frame: give the curating user read access")


def test_an_overwrite_that_cannot_remove_the_dataset_it_replaced_says_the_new_one_is_complete(tmp_path, monkeypatch):
    """--overwrite over a colleague's dataset (files this user may not delete) said "OUT is incomplete - rerun to
    resume" though the new dataset was complete, and left the old one hidden beside it (emulated: removing it raises
    PermissionError, as it does there)."""
    import shutil

    from chdl import dataset as ds

    write_run(tmp_path / "raw" / "r", lanes=4)
    out = tmp_path / "d.zarr"
    assert CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(out), "-q"]).exit_code == 0
    real = ds._remove

    def remove(path):
        if path.name == ".d.zarr.previous" and path.exists():
            raise PermissionError(13, "Permission denied", str(path / "zarr.json"))
        real(path)

    monkeypatch.setattr(ds, "_remove", remove)
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (f"warning: {out} is complete, but the dataset it replaced could not be removed: "
            f"{tmp_path / '.d.zarr.previous'} (Permission denied); remove it by hand") in r.output
    assert open_dataset(out).attrs["complete"] and (tmp_path / ".d.zarr.previous").is_dir()
    shutil.rmtree(tmp_path / ".d.zarr.previous")
