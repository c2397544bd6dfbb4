"""The throughput measures in curation.pipeline (per-process malloc policy, sequences curated on
threads inside a shard) change speed only: the same bytes come out."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import zarr

import curation.pipeline as pipeline
from curation.config import CurateConfig
from curation_helpers import write_run

FAULTS = {(0, 4): ("blur", 2.0), (1, 0): ("gain", 0.75), (2, 6): ("jitter", 5.0), (2, 9): ("gain", 1.3)}
ARRAYS = ["frames", "qc_flags", "qc_scores", "split", "run_index", "lane", "position_um", "timestamp_ns"]

# QC scores and a reconstruction of one synthetic sequence, printed as a digest (run in a fresh process)
_DIGEST = """
import hashlib, sys
import cv2
import numpy as np
from curation import qc, pipeline
from curation.reconstruct import reconstruct
from curation.synthetic import SynthSpec, make_sequence
if sys.argv[1] == "tuned":
    assert pipeline.tune_process()
frames, _ = make_sequence(SynthSpec(height=300, width=400, step_px=20.0), 7, {3: ("blur", 2.0), 6: ("gain", 0.7)})
avail = np.ones(len(frames), bool)
s = qc.measure(frames, avail)
good = avail.copy(); good[[3, 6]] = False
rec, _ = reconstruct(frames, good)
print(hashlib.sha256(s.tobytes() + rec.tobytes()).hexdigest())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc policy is glibc-only")
def test_malloc_policy_gives_identical_scores_and_reconstructions():
    out = {}
    for mode in ("default", "tuned"):
        r = subprocess.run([sys.executable, "-c", _DIGEST, mode], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out[mode] = r.stdout.strip()
    assert len(out["default"]) == 64 and out["default"] == out["tuned"]


def test_sequence_threads_do_not_change_the_dataset(tmp_path, monkeypatch):
    write_run(tmp_path / "raw" / "run-a", lanes=5, faults=FAULTS, seed=3)
    cfg = CurateConfig(sequences_per_shard=3)
    outs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(pipeline, "sequence_threads", lambda workers, cluster=None, n=threads: n)
        out = tmp_path / f"t{threads}.zarr"
        pipeline.curate(tmp_path / "raw", out, cfg, workers=1, progress=False, log=lambda m: None)
        outs.append(zarr.open_group(str(out), mode="r"))
    assert (outs[0]["qc_flags"][:] != 0).sum() >= 3  # faults were flagged and reconstructed
    for g in outs[1:]:
        for name in ARRAYS:
            np.testing.assert_array_equal(outs[0][name][:], g[name][:], err_msg=name)
        assert sorted(g["originals"].array_keys()) == sorted(outs[0]["originals"].array_keys())
        for key in outs[0]["originals"].array_keys():
            np.testing.assert_array_equal(outs[0]["originals"][key][:], g["originals"][key][:])



def test_sequence_threads_fill_idle_cores_only(monkeypatch):
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert pipeline.sequence_threads(1) == 2          # one worker on two cores: both cores busy
    assert pipeline.sequence_threads(2) == 1          # two workers on two cores: no oversubscription
    assert pipeline.sequence_threads(4) == 1
    assert pipeline.sequence_threads(1, cluster=object()) == 1
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert pipeline.sequence_threads(2) == pipeline.SEQUENCE_THREADS


def test_curate_hands_the_thread_count_to_its_workers(tmp_path, monkeypatch):
    write_run(tmp_path / "raw" / "run-a", lanes=2, seed=3)
    seen = []
    real = pipeline._shard_task
    monkeypatch.setattr(pipeline, "_shard_task", lambda task: (seen.append(pipeline._CTX["sequence_threads"]),
                                                               real(task))[1])
    monkeypatch.setattr(pipeline, "sequence_threads", lambda workers, cluster=None: 3)
    pipeline.curate(tmp_path / "raw", tmp_path / "o.zarr", CurateConfig(sequences_per_shard=3), workers=1,
                    progress=False, log=lambda m: None)
    assert seen and set(seen) == {3}

# --- QC's per-frame speed measures (scratch buffers, batched scores and thresholds): same numbers -------

from curation import qc  # noqa: E402
from curation.synthetic import SynthSpec, make_sequence  # noqa: E402


def test_scratch_buffers_carry_nothing_from_one_frame_to_the_next():
    """_prepare writes every scratch value it reads: buffers full of another frame's (or NaN) values
    give the same integral images and spectrum as fresh ones."""
    frames, _ = make_sequence(SynthSpec(height=120, width=160), 2, {3: ("gain", 1.4)})
    f_sharp = qc.scales(120, 160)[0]
    window = qc._hanning(80 // f_sharp, 60 // f_sharp)

    def prepare(img, buffers):
        fine = np.empty((121 // f_sharp, 161 // f_sharp), np.float32)
        reg = np.empty((3, 60 // f_sharp + 1, 80 // f_sharp + 1), np.float32)
        spectrum, small, _ = qc._prepare(img, f_sharp, 255.0, window, fine, reg, buffers)
        return fine, reg, spectrum.copy(), small

    used = {}
    prepare(frames[7], used)
    for b in used.values():
        b.fill(np.nan)
    for got, want in zip(prepare(frames[3], used), prepare(frames[3], {})):
        np.testing.assert_array_equal(got, want)


def test_sequence_thresholds_in_one_batch_equal_score_by_score():
    """All six scores at once (a missing frame is missing in every score) give the numbers that each
    score alone gives; a score with its own missing values falls back to score by score."""
    rng = np.random.default_rng(4)
    thr = np.full(len(qc.SCORE_NAMES), 1e-3)
    for trial in range(20):
        s = (rng.standard_normal((10, 6)) * rng.uniform(0.01, 1, 6)).astype(np.float32)
        s[:, [qc.I_MISREG, qc.I_SHADING, qc.I_BANDING]] = np.abs(s[:, [qc.I_MISREG, qc.I_SHADING, qc.I_BANDING]])
        s[rng.choice(10, trial % 4, replace=False)] = np.nan
        if trial % 5 == 4:
            s[0, 2] = np.nan  # one score missing alone
        want = np.array(thr)
        for k in range(6):
            v = s[:, k][np.isfinite(s[:, k])].astype(np.float64)
            if v.size >= 5:
                want[k] = max(want[k], 4.0 * float(qc._centre_spread(v, k, qc.SEQUENCE_QUANTILE)[1]))
        np.testing.assert_array_equal(qc.sequence_thresholds(s, thr, 4.0), want)


def _scores_frame_by_frame(q: qc.SequenceQC, barred: set[int]) -> np.ndarray:
    """SequenceQC.scores written as the plain per-frame loop (the reference for its batched form);
    needs q.scores(barred) to have run, so its pair caches are filled."""
    out = np.full((q.T, len(qc.SCORE_NAMES)), np.nan, np.float32)
    allowed = set(q.avail) - barred
    v0, v1 = q.motion_model(barred)
    for k, t in enumerate(q.avail):
        comps = []
        for r in q._refs(t, allowed) or q._refs(t, set(q.avail)):
            a, b = min(t, r), max(t, r)
            if q._pair[a, b] is None:
                continue
            c = q._pair[a, b].copy()
            c[3:5] -= q._vignetting_slope() * q._disp[a, b] / q.f_reg
            c = c if t < r else c * np.array([-1.0, -1.0, -1.0, -1.0, -1.0, 1.0])
            off = ((r - t) * v0[k] + v1[k] * (r - t) ** 2 / 2)[None, :] - (q._layers[a, b] if t < r else -q._layers[a, b])
            comps.append(np.concatenate([c, off[np.argmin(np.hypot(off[:, 0], off[:, 1]))]]))
        if comps:
            med = np.median(np.stack(comps), axis=0)
            out[t, [qc.I_SHARP, qc.I_BRIGHT, qc.I_CONTRAST, qc.I_BANDING]] = med[[0, 1, 2, 5]]
            out[t, qc.I_SHADING] = np.hypot(med[3], med[4])
            out[t, qc.I_MISREG] = min(np.hypot(x[6], x[7]) for x in comps)
    return out


@pytest.mark.parametrize("spec,faults,missing,barred", [
    (SynthSpec(height=120, width=160, step_px=8.0), {4: ("blur", 2.0)}, [], set()),
    (SynthSpec(height=120, width=170, step_px=0.0, mover_px=-5.0), {2: ("jitter", 4.0)}, [7], {2}),  # two motion layers
    (SynthSpec(height=120, width=160, step_px=1.0, accel_px=1.6), {0: ("gain", 1.4), 8: ("offset", 20)}, [5, 9], {0, 8}),
], ids=["moving", "mover-missing-barred", "accelerating-ends"])
def test_batched_scores_equal_the_frame_by_frame_loop(spec, faults, missing, barred):
    frames, _ = make_sequence(spec, 11, faults)
    avail = np.ones(10, bool)
    avail[missing] = False
    q = qc.SequenceQC(frames, avail)
    q.scores()
    got = q.scores(barred)
    np.testing.assert_array_equal(got, _scores_frame_by_frame(q, barred))
    assert np.isnan(got[missing]).all() and np.isfinite(got[avail]).all()
    if spec.mover_px:  # the padding of pairs with several motion layers is exercised
        assert max(len(v) for v in q._layers.values()) > 1


def _files(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shard_tasks_on_threads_of_one_process_write_the_same_bytes(tmp_path, monkeypatch):
    """A worker keeps its dataset writer and its array for a shard's pixels from one shard task to the next
    (pipeline._kept), per thread: shard tasks run at once on three threads of one process (as a Dask worker
    started with --nthreads 3 runs them) write the dataset of a plain run, byte for byte."""
    from concurrent.futures import ThreadPoolExecutor

    write_run(tmp_path / "raw" / "run-a", lanes=6, faults=FAULTS, seed=3)
    cfg = CurateConfig(sequences_per_shard=2)
    pipeline.curate(tmp_path / "raw", tmp_path / "ref" / "d.zarr", cfg, workers=1, progress=False, log=lambda m: None)
    real, saved = pipeline._run_tasks, dict(pipeline._CTX)

    def on_threads(fn, tasks, ctx, workers, cluster=None):
        if fn is not pipeline._shard_task:
            yield from real(fn, tasks, ctx, workers, cluster)
            return
        pipeline._init_worker(ctx)
        with ThreadPoolExecutor(3) as pool:
            yield from pool.map(fn, tasks)

    monkeypatch.setattr(pipeline, "_run_tasks", on_threads)
    try:
        pipeline.curate(tmp_path / "raw", tmp_path / "threads" / "d.zarr", cfg, workers=1, progress=False,
                        log=lambda m: None)
        assert len(pipeline._CTX["kept"]) >= 2  # several threads, each with its own writer and pixel array
    finally:
        pipeline._CTX.clear()
        pipeline._CTX.update(saved)
    ref, got = _files(tmp_path / "ref" / "d.zarr"), _files(tmp_path / "threads" / "d.zarr")
    assert sorted(ref) == sorted(got) and any(k.startswith("originals/") for k in ref)
    assert [k for k in ref if k != "zarr.json" and ref[k] != got[k]] == []


# --- reconstruction's speed measures (the self-check on QC's frames, rectangles instead of masks, one DIS
# instance per thread, in-place rounding): the same frames and the same choices --------------------------

from curation import reconstruct as rec  # noqa: E402
from curation.sequence import curate_sequence  # noqa: E402


@pytest.mark.parametrize("max_value,missing", [(255, [6]), (4095, []), (63, [0])], ids=["8bit-missing", "12bit", "6bit"])
def test_self_check_on_qcs_sharp_frames_reconstructs_the_same(max_value, missing):
    """At 800 px wide the self-check runs at half size: on the frames QC downsampled (SequenceQC.sharp_frames)
    it makes the same choices and frames as on its own downsampling, at every bit depth."""
    spec = SynthSpec(height=160, width=800, step_px=13.0, max_value=max_value)
    frames, _ = make_sequence(spec, 5, {2: ("blur", 2.5), 7: ("jitter", 6.0), 9: ("gain", 0.6)})
    if max_value < 255:
        frames = frames.astype(np.uint8)
    avail = np.ones(10, bool)
    avail[missing] = False
    frames[missing] = 0
    good = avail.copy()
    good[[2, 7, 9]] = False
    q = qc.SequenceQC(frames, avail, float(max_value))
    assert qc.scales(160, 800)[0] == 2 and [t for t, x in enumerate(q.sharp_frames()) if x is None] == missing
    got_m, want_m = {}, {}
    got = rec.reconstruct(frames, good, float(max_value), chosen=got_m, check_frames=q.sharp_frames())
    want = rec.reconstruct(frames, good, float(max_value), chosen=want_m)
    assert got_m == want_m and got[1] == want[1] == [t for t in range(10) if not good[t]]
    np.testing.assert_array_equal(got[0], want[0])


def test_curate_sequence_reconstructs_with_qcs_frames():
    """curate_sequence hands QC's sharpness-scale frames to the reconstruction: the stored frames are those
    of reconstruct() on its own."""
    frames, _ = make_sequence(SynthSpec(height=160, width=800, step_px=9.0), 8, {4: ("blur", 3.0)})
    avail = np.ones(10, bool)
    base = qc.calibrate([qc.measure(frames, avail)] * 3)
    r = curate_sequence(frames, avail, base, qc.thresholds(CurateConfig().qc.floors, CurateConfig().qc.z, base), 3, 255.0)
    assert np.flatnonzero(r.flags).tolist() == [4] and not r.excluded
    np.testing.assert_array_equal(r.frames, rec.reconstruct(frames, r.flags == 0, 255.0)[0])


def test_blend_over_rectangles_equals_the_masked_sums():
    """_blend accumulates each warped frame over its covered rectangle: the same numbers as the sums over
    the whole frame with a 0/1 coverage mask (the formula it replaced), including a frame moved out of view."""
    rng = np.random.default_rng(2)
    img = [rng.random((40, 60), dtype=np.float32) for _ in range(2)]
    for d0, d1, w0 in [((2.3, -1.6), (-4.7, 0.4), 0.7), ((0.0, 0.0), (61.0, 3.0), 0.5), ((-3.5, 7.25), (1.0, -2.0), 0.25)]:
        parts = []
        ref_num, ref_den = np.zeros((40, 60), np.float32), np.zeros((40, 60), np.float32)
        for im, d, wgt in ((img[0], np.array(d0), w0), (img[1], np.array(d1), 1 - w0)):
            out, rect = rec._warp(im, d)
            parts.append((out, rect, wgt))
            mask = np.zeros((40, 60), np.float32)
            if rect is not None:
                mask[rect] = 1.0
            weight = mask * wgt
            ref_den += weight
            weight *= out
            ref_num += weight
        nearest = max(parts, key=lambda p: p[2])[0]
        want = np.where(ref_den > 1e-6, ref_num / np.maximum(ref_den, 1e-6), nearest)
        np.testing.assert_array_equal(rec._blend(parts), want)


def test_reused_dis_instance_gives_a_fresh_instances_flow():
    """One DIS instance per thread, reused across calls and frame sizes: each flow equals a fresh instance's."""
    frames, _ = make_sequence(SynthSpec(height=120, width=160, step_px=5.0, mover_px=3.0), 4)
    small = np.stack([cv2.resize(f, (80, 60), interpolation=cv2.INTER_AREA) for f in frames])
    for a, b in [(0, 3), (2, 1), (5, 9)]:
        for seq in (frames, small, frames):
            fresh = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(seq[a], seq[b], None)
            np.testing.assert_array_equal(rec._flow_field(seq[a], seq[b]), fresh)


def test_eight_bit_frames_are_what_the_flow_reads_and_rounding_keeps_the_input():
    """The flow reads 8-bit frames at max_value 255 directly: _to8(to_unit(v)) == v for every grey level.
    _from_unit rounds in a work array (the frame it gets may be a cached one) and _mse is the plain formula."""
    v = np.arange(256, dtype=np.uint8)[None, :]
    np.testing.assert_array_equal(rec._to8(qc.to_unit(v, 255.0)), v)
    x = np.random.default_rng(0).random((30, 40), dtype=np.float32) * np.float32(1.2) - np.float32(0.1)
    keep = x.copy()
    for mv, dt in ((255.0, np.uint8), (4095.0, np.uint16)):
        np.testing.assert_array_equal(rec._from_unit(x, mv, dt), np.clip(np.rint(x * mv), 0, mv).astype(dt))
    np.testing.assert_array_equal(x, keep)
    y = x[::-1].copy()
    assert rec._mse(x, y) == float(np.mean((x - y) ** 2))
    np.testing.assert_array_equal(x, keep)
