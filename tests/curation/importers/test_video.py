"""Video importer: time-block split without leakage, preprocessing, provenance, errors — synthetic videos only.

The test videos are written here with OpenCV's FFmpeg writer in FFV1 (lossless), so every decoded pixel is
known: frame ``i`` has a flat top half of level ``CODE0 + CODE_STEP * i`` (its index, readable after any
resize) and a horizontal gradient moving 3 px a frame in the bottom half, with 255-valued columns just
outside the centre crop the importer must cut away.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from chdl.cli import main
from chdl.dataset import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, open_dataset
from chdl.torch_dataset import SequenceDataset
from curation.importers.common import ImporterInputError
from curation.importers.video import center_crop_box, import_video, parse_size, plan_clips, read_video

SRC_H, SRC_W = 64, 96  # source frames: wider (3:2) than the 4:3 target, so the width is cropped
SIZE = (24, 32)
CODE0, CODE_STEP = 20, 3  # top-half level of frame i


def write_video(path: Path, n_frames: int, fourcc: str = "FFV1", fps: float = 25.0) -> Path:
    y0, x0, h, w = center_crop_box(SRC_H, SRC_W, SIZE)
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps, (SRC_W, SRC_H), True)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for i in range(n_frames):
        gray = np.empty((SRC_H, SRC_W), np.uint8)
        gray[: SRC_H // 2] = CODE0 + CODE_STEP * i
        gray[SRC_H // 2:] = (40 + (np.arange(SRC_W) * 5 + 3 * i) % 160)[None, :]  # 40..199, moving right
        gray[SRC_H // 2:, :x0] = 255  # outside the centre crop
        gray[SRC_H // 2:, x0 + w:] = 255
        writer.write(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def frame_index(frame: np.ndarray) -> int:
    """The source index of a stored (H, W) frame, from its flat top rows."""
    top = frame[: SIZE[0] // 2 - 1].astype(np.int64)
    assert top.min() == top.max(), "top half not flat"
    code, rem = divmod(int(top[0, 0]) - CODE0, CODE_STEP)
    assert rem == 0
    return code


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {"a": write_video(d / "a.avi", 60), "b": write_video(d / "b.avi", 37), "short": write_video(d / "short.avi", 4),
            "twelve": write_video(d / "twelve.avi", 12)}


def test_plan_is_a_time_block_split_with_a_one_clip_gap():
    p = plan_clips(100, 10, val_fraction=0.2)
    assert p.train_starts == tuple(range(0, 70, 10)) and p.val_starts == (80, 90)
    assert p.gap_block == (70, 80) and p.train_block == (0, 70) and p.val_block == (80, 100)
    p = plan_clips(107, 10, val_fraction=0.2, train_stride=3, val_stride=5)  # tail of 7 frames
    assert p.train_starts == tuple(range(0, 61, 3)) and p.val_starts == (80, 85, 90, 95)
    rng = np.random.default_rng(0)
    for _ in range(300):
        L, n = int(rng.integers(2, 12)), int(rng.integers(1, 400))
        kw = dict(val_fraction=float(rng.choice([0.1, 0.2, 0.3, 0.5])), train_stride=int(rng.integers(1, 2 * L)),
                  val_stride=int(rng.integers(1, 2 * L)))
        n_val = max(1, int(np.floor(kw["val_fraction"] * (n // L) + 0.5)))
        try:
            p = plan_clips(n, L, **kw)
        except ValueError as e:
            assert "too short" in str(e) and n // L - n_val - 1 < 1
            continue
        assert p.train_starts and p.val_starts
        last_train = max(p.train_starts) + L - 1
        assert last_train < p.gap_block[0] == p.gap_block[1] - L and p.gap_block[1] == min(p.val_starts)
        assert max(p.val_starts) + L <= n
        assert min(p.val_starts) == (n // L - n_val) * L  # the last clips of the non-overlapping grid
    assert plan_clips(25, 10, val_fraction=0).train_starts == (0, 10) and plan_clips(25, 10, val_fraction=0).val_starts == ()
    with pytest.raises(ValueError, match="too short for one clip"):
        plan_clips(9, 10)
    with pytest.raises(ValueError, match="too short to split"):
        plan_clips(29, 10)


def test_plan_with_a_test_block_is_train_gap_val_gap_test():
    p = plan_clips(107, 10, val_fraction=0.2, test_fraction=0.2, val_stride=5)  # 10 clips + a tail of 7
    assert p.train_starts == (0, 10, 20, 30) and p.val_starts == (50, 55, 60) and p.test_starts == (80, 85, 90, 95)
    assert (p.gap_block, p.val_block, p.test_gap_block, p.test_block) == ((40, 50), (50, 70), (70, 80), (80, 105))
    p = plan_clips(57, 10, val_fraction=0, test_fraction=0.2)  # a test block without validation: train | gap | test
    assert p.train_starts == (0, 10, 20) and p.val_starts == () and p.test_starts == (40,)
    assert plan_clips(100, 10, val_fraction=0.2).test_starts == ()  # no test block unless asked for
    rng = np.random.default_rng(1)
    for _ in range(400):
        L, n = int(rng.integers(2, 12)), int(rng.integers(1, 400))
        kw = dict(val_fraction=float(rng.choice([0, 0.1, 0.2, 0.3])), test_fraction=float(rng.choice([0.05, 0.1, 0.2, 0.4])),
                  train_stride=int(rng.integers(1, 2 * L)), val_stride=int(rng.integers(1, 2 * L)))
        clips = n // L
        held = [0 if f == 0 else max(1, int(np.floor(f * clips + 0.5))) for f in (kw["val_fraction"], kw["test_fraction"])]
        try:
            p = plan_clips(n, L, **kw)
        except ValueError as e:
            assert "too short" in str(e) and (clips < 1 or clips - sum(held) - (held[0] > 0) - 1 < 1), (n, L, kw)
            continue
        assert p.train_starts and p.test_starts and bool(p.val_starts) == (held[0] > 0)
        assert min(p.test_starts) == (clips - held[1]) * L and max(p.test_starts) + L <= n  # the last grid clips
        blocks = [[s for s in starts] for starts in (p.train_starts, p.val_starts, p.test_starts) if starts]
        for before, after in zip(blocks, blocks[1:]):  # at least one clip of unused frames between neighbours
            assert max(before) + L - 1 + L < min(after), (n, L, kw, p)
    with pytest.raises(ValueError, match="too short to split.*1 test"):
        plan_clips(39, 10, test_fraction=0.1)  # 3 clips: train, gap, 1 val, gap, 1 test needs 5
    with pytest.raises(ValueError, match="must be below 1"):
        plan_clips(100, 10, val_fraction=0.5, test_fraction=0.5)


def test_crop_box_and_size():
    assert center_crop_box(480, 640, (120, 160)) == (0, 0, 480, 640)
    assert center_crop_box(528, 720, (120, 160)) == (0, 8, 528, 704)  # wider: crop the width
    assert center_crop_box(600, 600, (120, 160)) == (75, 0, 450, 600)  # taller: crop the height
    assert parse_size("120x160") == (120, 160) and parse_size("64×64") == (64, 64)
    for bad in ("120", "0x10", "axb"):
        with pytest.raises(ValueError):
            parse_size(bad)
    from diffuma.metrics import SSIM_MIN_SIDE

    assert parse_size(f"{SSIM_MIN_SIDE}x{SSIM_MIN_SIDE}") == (11, 11) and parse_size("4096x4096") == (4096, 4096)
    for bad in ("10x16", "6x10", "1x1", "99999x99999"):  # under SSIM's window (training died at validation) / OOM
        with pytest.raises(ValueError, match="height and width must be 11 to 4096 px"):
            parse_size(bad)


def test_a_size_that_cannot_fit_in_memory_is_refused_before_decoding(videos, monkeypatch):
    import curation.importers.video as video

    monkeypatch.setattr(video, "available_memory", lambda: 1_000_000)  # 1 MB
    with pytest.raises(video.ImporterInputError, match=r"frames at 480x640 need .* GiB of memory, 0\.0 GiB "
                                                      r"available: choose a smaller --size or a larger --frame-stride"):
        read_video(videos["a"], (480, 640))
    assert read_video(videos["a"], (12, 16)).frames.shape[1:] == (12, 16)  # small enough


def test_read_video_grayscale_crop_resize_and_stride(videos):
    v = read_video(videos["a"], SIZE)
    assert v.frames.shape == (60, *SIZE) and v.frames.dtype == np.uint8
    assert v.frames_decoded == 60 and v.fps == pytest.approx(25.0) and (v.width, v.height) == (SRC_W, SRC_H)
    assert [frame_index(f) for f in v.frames] == list(range(60))
    bottom = v.frames[:, SIZE[0] // 2 + 1:]
    assert bottom.min() >= 40 and bottom.max() < 200  # gradient kept, the 255 border columns cropped away
    assert not np.array_equal(bottom[0], bottom[1])  # it moves
    s = read_video(videos["a"], SIZE, frame_stride=4)
    assert [frame_index(f) for f in s.frames] == list(range(0, 60, 4)) and s.frames_decoded == 60


def test_decoding_shows_a_frame_progress_bar_unless_quiet(tmp_path, videos, capsys):
    import_video([videos["a"]], tmp_path / "p.zarr", size=SIZE, progress=True)
    err = capsys.readouterr().err
    decode = [line for line in err.replace("\r", "\n").splitlines() if "decode a.avi" in line]
    assert decode and "60/60" in decode[-1] and "frame/s" in decode[-1], err  # total = the container's count
    assert "100%" in decode[-1]
    import_video([videos["a"]], tmp_path / "q.zarr", size=SIZE, progress=False)
    assert capsys.readouterr().err == ""
    r = CliRunner().invoke(main, ["import", "video", str(videos["a"]), "--out", str(tmp_path / "r.zarr"), "--size",
                                  "24x32", "--quiet"])
    assert r.exit_code == 0 and "decode" not in r.output and "frame/s" not in r.output, r.output


def check_dataset(out: Path, videos: list[Path], L: int, frame_stride: int = 1) -> dict:
    """Shapes, splits, frame identity and no train/val overlap; returns per-video train/val frame sets."""
    ds = open_dataset(out)
    frames, split, run = ds.frames[:], ds.split, ds.group["run_index"][:]
    assert frames.dtype == np.uint8 and frames.shape[1:] == (L, 1, *SIZE)
    extra = ds.attrs["extra"]
    assert len(extra["clip_start_frame"]) == len(frames)
    used = {(r, s): set() for r in range(len(videos)) for s in (SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST)}
    for i, seq in enumerate(frames):
        idx = [frame_index(f) for f in seq[:, 0]]
        start = extra["clip_start_frame"][i]
        assert idx == [start + t * frame_stride for t in range(L)]  # consecutive (kept) frames of one video
        used[(int(run[i]), int(split[i]))].update(idx)
    order = {SPLIT_TRAIN: 0, SPLIT_VAL: 1, SPLIT_TEST: 2}
    assert [order[int(c)] for c in split] == sorted(order[int(c)] for c in split)  # train first, then val, then test
    for r, meta in enumerate(extra["videos"]):
        train, val, test = used[(r, SPLIT_TRAIN)], used[(r, SPLIT_VAL)], used[(r, SPLIT_TEST)]
        assert train and val and not train & val and not test & (train | val)
        assert max(train) + L * frame_stride <= min(val)  # a full clip of unused frames between the blocks
        if test:
            assert max(val) + L * frame_stride <= min(test)
        for name, code, frames in (("train", SPLIT_TRAIN, train), ("val", SPLIT_VAL, val), ("test", SPLIT_TEST, test)):
            assert meta.get(f"{name}_clips", 0) == int(((run == r) & (split == code)).sum())
            if frames:
                assert meta[f"{name}_frames"] == [min(frames), max(frames) + 1]
    return dict(ds=ds, used=used)


def test_cli_imports_videos_with_time_block_split_and_provenance(tmp_path, videos):
    out = tmp_path / "v.zarr"
    files = [videos["a"], videos["b"]]
    r = CliRunner().invoke(main, ["import", "video", *map(str, files), "--out", str(out), "--size", "24x32",
                                  "--in-frames", "3", "--out-frames", "2", "--preview", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert "a.avi: 60 frames at 25.00 fps" in r.output and (tmp_path / "p.png").stat().st_size > 0
    assert "-> train 9 clips (frames 0-44), val 2 (frames 50-59)" in r.output
    r0 = CliRunner().invoke(main, ["import", "video", str(videos["a"]), "--out", str(tmp_path / "v0.zarr"), "--size",
                                   "24x32", "--in-frames", "3", "--out-frames", "2", "--val-fraction", "0"])
    assert r0.exit_code == 0 and "-> train 12 clips (frames 0-59), val 0\n" in r0.output, r0.output
    res = check_dataset(out, files, L=5)
    ds = res["ds"]
    # a: 60 frames = 12 clips -> 2 val (frames 50-59), gap 45-49, 9 train; b: 37 = 7 clips (+2 tail) -> 1 val, 5 train
    assert ds.summary()["splits"] == {"train": 14, "val": 3, "test": 0, "excluded": 0}
    assert res["used"][(0, SPLIT_VAL)] == set(range(50, 60)) and res["used"][(1, SPLIT_VAL)] == set(range(30, 35))
    assert ds.attrs["in_frames"] == 3 and ds.attrs["out_frames"] == 2 and ds.attrs["max_value"] == 255
    assert ds.attrs["runs"] == ["a.avi", "b.avi"]
    prov = ds.attrs["provenance"]
    cfg = prov["config"]
    assert [s["file"] for s in cfg["sources"]] == ["a.avi", "b.avi"]
    assert [s["sha256"] for s in cfg["sources"]] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert cfg["size"] == [24, 32] and cfg["frame_stride"] == 1 and cfg["train_stride"] == 5 and cfg["val_fraction"] == 0.2
    assert "import video" in prov["command"] and "a.avi" in prov["command"]
    meta = ds.attrs["extra"]["videos"][0]
    assert meta["frames_decoded"] == 60 and meta["gap_frames"] == [45, 50] and meta["crop_yxhw"] == [0, 5, 64, 85]
    x, y = SequenceDataset(out, split="val")[0]
    assert tuple(x.shape) == (3, 1, 24, 32) and tuple(y.shape) == (2, 1, 24, 32) and float(x.max()) <= 1


def test_cli_holds_out_a_test_block_after_validation(tmp_path, videos):
    out = tmp_path / "t.zarr"
    r = CliRunner().invoke(main, ["import", "video", str(videos["a"]), str(videos["b"]), "--out", str(out), "--size",
                                  "24x32", "--in-frames", "3", "--out-frames", "2", "--test-fraction", "0.2"])
    assert r.exit_code == 0, r.output
    # a: 12 clips of 5 -> train 0-29 (6), gap 30-34, val 35-44 (2), gap 45-49, test 50-59 (2)
    assert "a.avi: 60 frames at 25.00 fps, 96x64 -> train 6 clips (frames 0-29), val 2 (frames 35-44), test 2 (frames 50-59)" in r.output
    assert "(train 9, val 3, test 3 sequences)" in r.output  # b: 7 clips (+2 frames) -> 3 train, 1 val, 1 test
    res = check_dataset(out, [videos["a"], videos["b"]], L=5)
    assert res["used"][(1, SPLIT_TEST)] == set(range(30, 35)) and res["used"][(1, SPLIT_VAL)] == set(range(20, 25))
    ds = res["ds"]
    assert ds.summary()["splits"] == {"train": 9, "val": 3, "test": 3, "excluded": 0}
    assert ds.attrs["provenance"]["config"]["test_fraction"] == 0.2 and ds.attrs["extra"]["test_fraction"] == 0.2
    assert ds.attrs["extra"]["videos"][0]["test_gap_frames"] == [45, 50]
    x, y = SequenceDataset(out, split="test")[0]  # what chdl eval --split test reads
    assert [frame_index(f) for f in x[:, 0].mul(255).round().byte().numpy()] == [50, 51, 52]
    # the frame stride's note follows the frame count, not the hint after it
    with pytest.raises(ImporterInputError, match=r"too short to split: 30 frames \(1 in 2 of 60 decoded\) give 3 "
                                                 r"clip\(s\) of 10, .*\(0: no such block\)$"):
        import_video([videos["a"]], tmp_path / "st.zarr", size=SIZE, frame_stride=2, test_fraction=0.2, progress=False)
    # a dataset with a test block and no validation: eval/predict/bench on 'val' point to --split test
    from chdl.dataset import empty_split

    no_val = import_video([videos["a"]], tmp_path / "nv.zarr", size=SIZE, in_frames=3, out_frames=2, val_fraction=0,
                          test_fraction=0.2, progress=False)
    assert empty_split(no_val, "val") == f"{no_val}: the 'val' split has no sequences (it has train 9, test 2: --split test)"
    # fractions that leave no room for training are refused before decoding, in one line
    proc = run_cli(str(videos["a"]), "--out", str(tmp_path / "u.zarr"), "--val-fraction", "0.5", "--test-fraction", "0.5")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == \
        "Error: Invalid value for '--test-fraction': --val-fraction 0.5 + --test-fraction 0.5 = 1: must be below 1 " \
        "(no clip left for training)", proc.stderr
    assert not (tmp_path / "u.zarr").exists()
    proc = run_cli(str(videos["a"]), "--out", str(tmp_path / "w.zarr"), "--test-fraction", "0.3", "--val-fraction", "0.4")
    assert proc.returncode == 1 and "too short to split" in proc.stderr and "a.avi" in proc.stderr, proc.stderr


def test_overlapping_train_clips_and_frame_stride_never_touch_val(tmp_path, videos):
    files = [videos["a"], videos["b"]]
    out = import_video(files, tmp_path / "o.zarr", size=SIZE, in_frames=3, out_frames=2, train_stride=2,
                       val_stride=3, progress=False)
    res = check_dataset(out, files, L=5)
    assert res["ds"].summary()["splits"] == {"train": 21 + 11, "val": 2 + 1, "test": 0, "excluded": 0}
    out = import_video([videos["a"]], tmp_path / "s.zarr", size=SIZE, in_frames=2, out_frames=2, frame_stride=2,
                       train_stride=1, progress=False)
    res = check_dataset(out, [videos["a"]], L=4, frame_stride=2)  # 30 kept frames: 7 clips, 1 val
    assert res["ds"].attrs["provenance"]["config"]["frame_stride"] == 2
    assert res["ds"].summary()["splits"] == {"train": 17, "val": 1, "test": 0, "excluded": 0}


def test_a_size_larger_than_the_source_is_said_for_each_file(tmp_path, videos):
    """Sources are 96x64 (crop 85x64 at 4:3): --size 120x160 enlarges them, and both commands say so per file."""
    r = CliRunner().invoke(main, ["import", "video", str(videos["a"]), "--out", str(tmp_path / "big.zarr"), "--size",
                                  "120x160", "-q"])
    assert r.exit_code == 0, r.output
    assert "[note: its 85x64 crop was enlarged to 160x120 (--size is larger than the source" in r.output, r.output
    r = CliRunner().invoke(main, ["import", "video", str(videos["a"]), "--out", str(tmp_path / "small.zarr"), "--size",
                                  "48x64", "-q"])
    assert r.exit_code == 0 and "enlarged" not in r.output, r.output  # 85x64 -> 64x48: smaller, no note
    r = CliRunner().invoke(main, ["import", "recordings", str(videos["a"]), "--out", str(tmp_path / "raw"), "--size",
                                  "120x160", "-q"])
    assert r.exit_code == 0, r.output
    assert f"warning: {videos['a']}: its 85x64 crop was enlarged to 160x120" in r.output, r.output


def test_mp4_input(tmp_path):
    src = write_video(tmp_path / "m.mp4", 30, fourcc="mp4v")
    out = import_video([src], tmp_path / "m.zarr", size=SIZE, progress=False)
    ds = open_dataset(out)
    assert ds.frames.shape == (2, 10, 1, *SIZE) and list(ds.split) == [SPLIT_TRAIN, SPLIT_VAL]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chdl", "import", "video", *args], capture_output=True, text=True)


def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, videos):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n")
    text = tmp_path / "README.txt"  # FFmpeg's tty demuxer "decodes" it: frames of rendered characters
    text.write_text("a line of text\n" * 2000)
    out = tmp_path / "x.zarr"
    cases = [
        (tmp_path / "missing.avi", "no such file"),
        (not_video, "not a video"),
        (text, "not a video (a text file"),
        (videos["short"], "too short for one clip"),
        (videos["twelve"], "too short to split"),  # 12 frames = 1 clip of 10: no room for train, gap and val
    ]
    for bad, problem in cases:
        proc = run_cli(str(videos["a"]), str(bad), "--out", str(out))  # a good file first: still nothing written
        assert proc.returncode == 1, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]  # also splits the bars' \r updates
        lines = [line for line in lines if not line.startswith("decode ")]  # the decoding progress bars
        assert len(lines) == 1 and str(bad) in lines[0] and problem in lines[0], proc.stderr
        assert proc.stderr.rstrip().endswith(lines[0])  # the error comes last, after any bar
        assert not out.exists()
    with pytest.raises(ImporterInputError, match=r"given twice \(.* is the same file\)"):  # (before decoding)
        import_video([videos["a"], videos["a"]], out, size=SIZE, progress=False)
    copy = tmp_path / "copy.avi"
    copy.write_bytes(Path(videos["a"]).read_bytes())
    with pytest.raises(ImporterInputError, match="same content as"):  # another file with the same bytes
        import_video([videos["a"], copy], out, size=SIZE, progress=False)
    assert not out.exists()


def test_existing_output_refused_unless_overwrite(tmp_path, videos):
    out = tmp_path / "v.zarr"
    args = ["import", "video", str(videos["b"]), "--out", str(out), "--size", "24x32"]
    runner = CliRunner()
    assert runner.invoke(main, args).exit_code == 0
    before = open_dataset(out).frames[:]
    r = runner.invoke(main, args + ["--in-frames", "2", "--out-frames", "2"])
    assert r.exit_code == 1 and "already exists" in r.output
    assert np.array_equal(open_dataset(out).frames[:], before)
    r = runner.invoke(main, args + ["--in-frames", "2", "--out-frames", "2", "--overwrite"])
    assert r.exit_code == 0 and open_dataset(out).frames.shape[1] == 4
    r = runner.invoke(main, ["import", "video", str(videos["b"]), "--out", str(tmp_path / "y.zarr"), "--size", "12"])
    assert r.exit_code == 2 and "--size" in r.output


def test_a_cut_off_file_is_told_apart_from_skipped_empty_packets(tmp_path):
    """A video cut at 60 % of its bytes imported its first frames with exit 0 and a note blaming skipped empty
    packets (which leave the last frame at the listed duration); now it is a warning that the file ends early."""
    from click.testing import CliRunner

    from chdl.cli import main
    from curation.importers.video import ends_early

    full = write_video(tmp_path / "full.avi", 70, fourcc="MJPG")
    data = full.read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 6 // 10])
    assert not ends_early(read_video(full, SIZE)) and ends_early(read_video(tmp_path / "cut.avi", SIZE))
    r = CliRunner().invoke(main, ["import", "video", str(tmp_path / "cut.avi"), "--out", str(tmp_path / "c.zarr"),
                                  "--size", "24x32", "--in-frames", "2", "--out-frames", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "[warning: the file ends after " in r.output and " of the 70 frames its container lists: cut off?" in r.output
    assert "empty packets" not in r.output
    # too short for a clip once cut: the error says it is cut off too (it said only "too short for one clip")
    r = CliRunner().invoke(main, ["import", "video", str(tmp_path / "cut.avi"), "--out", str(tmp_path / "s.zarr"),
                                  "--size", "24x32", "--in-frames", "25", "--out-frames", "25", "-q"])
    assert r.exit_code == 1 and "too short for one clip" in r.output and " of the 70 frames its container lists: cut " \
        "off (a copy or download that stopped)?" in r.output, r.output


def test_ends_early_tolerates_two_frames_or_one_percent_of_the_listed_frames():
    """A file "ends early" only when its last decoded frame comes more than max(2 frame intervals, 1 % of the listed
    frames) before where the last listed frame would be ((listed - 1) / fps): within that, fewer frames than listed
    are skipped empty packets. Not early when it decodes as many frames as listed, or without fps or timestamps."""
    from curation.importers.video import Video, ends_early

    def video(reported, last_ms, decoded=None, fps=25.0):  # 40 ms a frame at 25 fps
        return Video(path=Path("v.avi"), sha256="", frames=np.zeros((1, 1, 1), np.uint8), fps=fps, width=1, height=1,
                     codec="FFV1", frames_decoded=reported - 10 if decoded is None else decoded,
                     frames_reported=reported, crop=(0, 0, 1, 1), last_frame_ms=last_ms)

    # 100 listed: the last at 3960 ms; 2 intervals (80 ms) tolerated, 1 % would be only 1
    assert not ends_early(video(100, 3890.0)) and ends_early(video(100, 3870.0))
    # 1000 listed: the last at 39960 ms; 1 % (10 intervals, 400 ms) tolerated
    assert not ends_early(video(1000, 39600.0)) and ends_early(video(1000, 39500.0))
    assert not ends_early(video(100, 1000.0, decoded=100))  # every listed frame decoded: nothing missing
    assert not ends_early(video(100, 1000.0, fps=0.0))  # no frame rate: unknown
    assert not ends_early(video(100, 0.0))  # no timestamps: unknown


def _panning_video(path: Path, n: int, shake_at: int | None = None) -> Path:
    """A textured scene panning 2 px a frame (160x120, lossless FFV1); frame ``shake_at`` jerked 8 px sideways."""
    rng = np.random.default_rng(3)
    tex = cv2.GaussianBlur((rng.random((120, 160 + 2 * n)) * 255).astype(np.uint8), (0, 0), 2)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX)
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), 5.0, (160, 120), True)
    for i in range(n):
        f = np.ascontiguousarray(tex[:, 2 * i: 2 * i + 160])
        if i == shake_at:
            f = np.ascontiguousarray(np.roll(f, 8, axis=1))
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_videos_become_raw_recordings_that_curate_runs_qc_on(tmp_path):
    """A user's own footage: `chdl import video` makes a dataset without QC (a trial's six injected faults went in
    unflagged) and curate took no video. `chdl import recordings` writes each video as a raw recording of lane passes
    of --positions frames; curate then flags the jerked frame, and only it."""
    from click.testing import CliRunner

    from acquisition.raw import Recording
    from chdl.cli import main
    from chdl.dataset import FLAG_ILLUMINATION, FLAG_VIBRATION, open_dataset

    video = _panning_video(tmp_path / "pan.avi", 65, shake_at=23)
    r = CliRunner().invoke(main, ["import", "recordings", str(video), "--out", str(tmp_path / "raw"), "-q"])
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'raw' / 'pan'}: 60 frames in 6 lane passes of 10, the last 5 left out" in r.output
    rec = Recording.open(tmp_path / "raw" / "pan")
    assert rec.complete and rec.manifest["plan"]["lanes"] == 6 and rec.settings["bit_depth"] == 8
    assert rec.manifest["notes"]["source"]["frames_left_out"] == 5
    decoded = read_video(video, (120, 160)).frames
    assert [(f.lane, f.position_index) for f in rec.frames[:12]] == [(i // 10, i % 10) for i in range(12)]
    assert all(np.array_equal(rec.read(f), decoded[f.index]) for f in rec.frames)
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "raw"), str(tmp_path / "d.zarr"), "-q"])
    assert r.exit_code == 0, r.output
    flags = open_dataset(tmp_path / "d.zarr").qc_flags
    assert [tuple(map(int, i)) for i in np.argwhere(flags & (FLAG_VIBRATION | FLAG_ILLUMINATION))] == [(2, 3)], flags
    # an existing recording is refused by name before any video is decoded, unless it is this video's with these
    # options (a rerun after a SIGKILL: the recordings it had finished are kept, only the rest is imported; the
    # documented "remove it and rerun" met "already holds a recording" for the finished ones); a video too short
    # for a pass is one line and takes the recordings this command began with it
    r = CliRunner().invoke(main, ["import", "recordings", str(video), "--out", str(tmp_path / "raw"), "-q",
                                  "--size", "60x80"])
    assert r.exit_code == 1 and r.output.strip() == (f"Error: {tmp_path / 'raw' / 'pan'}: already holds a recording "
                                                     "(complete, 60 frames); refusing to overwrite it (move it away to "
                                                     "record there again); choose another --out"), r.output
    other = _panning_video(tmp_path / "other.avi", 20)
    before = (tmp_path / "raw" / "pan" / "frames.jsonl").read_bytes()
    r = CliRunner().invoke(main, ["import", "recordings", str(video), str(other), "--out", str(tmp_path / "raw"),
                                  "-q"])
    assert r.exit_code == 0, r.output
    assert f"kept {tmp_path / 'raw' / 'pan'} (imported before, from the same video with the same options): 60 " \
           "frames in 6 lane passes of 10, the last 5 left out (less than a pass)" in r.output, r.output
    assert f"wrote {tmp_path / 'raw' / 'other'}: 20 frames" in r.output
    assert (tmp_path / "raw" / "pan" / "frames.jsonl").read_bytes() == before
    short = _panning_video(tmp_path / "short.avi", 6)
    r = CliRunner().invoke(main, ["import", "recordings", str(video), str(short), "--out", str(tmp_path / "two"), "-q"])
    assert r.exit_code == 1 and r.output.strip() == (f"Error: {short}: too short for one lane pass: 6 frame(s), a pass "
                                                     "is 10 (--positions)"), r.output
    assert not (tmp_path / "two").exists()  # (the folder it made too: it stayed behind, empty)


def test_an_interrupted_video_to_recordings_leaves_no_recording(tmp_path, monkeypatch):
    """Ctrl-C in the middle of writing a recording: the recordings this call began are removed (a half-written one
    would be curated as an incomplete run)."""
    from acquisition.raw import RecordingWriter
    from curation.importers.video import video_to_recordings

    video = _panning_video(tmp_path / "pan.avi", 30)
    real, calls = RecordingWriter.append, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 15:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RecordingWriter, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        video_to_recordings([video], tmp_path / "raw", progress=False)
    assert len(calls) == 15 and not (tmp_path / "raw").exists()  # (the folder it made goes too)


def test_import_recordings_refuses_before_decoding_and_a_loser_leaves_the_winners_recording(tmp_path, monkeypatch):
    """Found by a trial: the same file given twice was written, then deleted, then refused as "already holds a
    recording"; an --out that is a file failed after decoding; a second import into the same folder, started while
    the first decoded, deleted the first one's recording as it was being written (its cleanup took the folder it had
    lost the claim to); a cut-off file went in without a word; a new --out stayed behind, empty, after a failure."""
    from click.testing import CliRunner

    import curation.importers.video as video_mod
    from acquisition.raw import Recording, RecordingWriter
    from chdl.cli import main

    video = _panning_video(tmp_path / "pan.avi", 20)

    def run(*args):
        return CliRunner().invoke(main, ["import", "recordings", *map(str, args), "-q"])

    r = run(video, tmp_path / "." / "pan.avi", "--out", tmp_path / "twice")
    assert r.exit_code == 1 and r.output.strip() == f"Error: {tmp_path / '.' / 'pan.avi'}: given twice ({video} is " \
                                                    "the same file)", r.output
    (tmp_path / "file").write_text("x")
    r = run(video, "--out", tmp_path / "file")
    assert r.exit_code == 1 and r.output.strip() == f"Error: {tmp_path / 'file'}: --out is a file, not a folder of " \
                                                    "recordings", r.output
    assert not (tmp_path / "twice").exists()
    # the other import claims raw/pan while this one decodes: this one stops in one line, the other's stays whole
    real_read = video_mod.read_video

    def the_other_import_meanwhile(*args, **kwargs):
        with RecordingWriter.create(tmp_path / "raw" / "pan", {"camera": {}, "settings": {
                "width": 160, "height": 120, "pixel_format": "Mono8", "fps": 5.0}}) as w:
            w.append(np.zeros((120, 160), np.uint8), lane=0, position_index=0, position_um=0.0, frame_id=0,
                     device_timestamp_ns=None, host_wall_ns=0, host_monotonic_ns=0)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(video_mod, "read_video", the_other_import_meanwhile)
    r = run(video, "--out", tmp_path / "raw")
    assert r.exit_code == 1 and "raw/pan: already holds a recording (complete, 1 frame)" in r.output, r.output
    assert len(Recording.open(tmp_path / "raw" / "pan")) == 1  # the winner's, untouched
    monkeypatch.undo()
    # a cut-off file is written as far as it goes, with a warning, and recorded as such
    data = (tmp_path / "pan.avi").read_bytes()
    long = _panning_video(tmp_path / "long.avi", 60)
    (tmp_path / "cut.avi").write_bytes(long.read_bytes()[: len(long.read_bytes()) * 6 // 10])
    r = run(tmp_path / "cut.avi", "--out", tmp_path / "cut")
    assert r.exit_code == 0 and " of the 60 frames its container lists: cut off? only those were written" in r.output, \
        r.output
    assert Recording.open(tmp_path / "cut" / "cut").manifest["notes"]["source"]["ends_early"] is True
    assert data  # (the first video untouched by all this)


def test_the_recorded_and_suggested_commands_can_be_pasted(tmp_path, videos):
    """`./-dash.mp4` was recorded as `-dash.mp4` (an option to a shell), and `chdl info` / `import recordings`
    suggested `chdl verify out Ä.zarr` / `chdl curate rec Ä OUT.zarr` unquoted."""
    import shlex
    import shutil

    shutil.copy(videos["a"], tmp_path / "-dash clip.avi")
    env_cmd = [sys.executable, "-m", "chdl"]
    r = subprocess.run([*env_cmd, "import", "video", "./-dash clip.avi", "--out", "out Ä.zarr", "--size", "24x32", "-q"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    command = open_dataset(tmp_path / "out Ä.zarr").attrs["provenance"]["command"]
    assert command == "chdl import video './-dash clip.avi' --out 'out Ä.zarr' --size 24x32", command
    assert shlex.split(command)[3] == "./-dash clip.avi"
    info = subprocess.run([*env_cmd, "info", "out Ä.zarr"], capture_output=True, text=True, cwd=tmp_path)
    assert "(chdl verify 'out Ä.zarr' checks them)" in info.stdout, info.stdout
    rec = subprocess.run([*env_cmd, "import", "recordings", "./-dash clip.avi", "--out", "-rec Ä", "-q"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert rec.returncode == 0 and "next: chdl curate './-rec Ä' OUT.zarr" in rec.stdout, rec.stdout + rec.stderr
