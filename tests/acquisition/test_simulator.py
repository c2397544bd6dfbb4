"""The dicing-lane simulator: determinism, fault labels, motion and kerf dynamics, ground-truth files."""

import json

import cv2
import numpy as np
import pytest

from acquisition.simulator import (FAULT_SCALES, KINDS, VISIBILITY_FLOOR, DicingLaneSimulator, Fault, SimConfig,
                                   label, load_truth, write_truth)

SMALL = dict(width=400, height=300)  # 3 um/px: the 60 um step is exactly 20 px


def test_same_seed_same_pixels_other_seed_other_pixels():
    a = DicingLaneSimulator(SimConfig(seed=5, fault_rate=0.3, **SMALL))
    b = DicingLaneSimulator(SimConfig(seed=5, fault_rate=0.3, **SMALL))
    c = DicingLaneSimulator(SimConfig(seed=6, fault_rate=0.3, **SMALL))
    fa, la, ca = a.sequence(2, 10)
    fb, lb, cb = b.sequence(2, 10)
    assert np.array_equal(fa, fb) and la == lb and cb.keys() == ca.keys()
    assert all(np.array_equal(ca[k], cb[k]) for k in ca)
    assert any(lbl["fault"] != "none" for lbl in la)  # the faulty path is covered by the comparison
    assert not np.array_equal(fa, c.sequence(2, 10)[0])
    # random access: a frame rendered alone equals the same frame rendered within its sequence
    assert np.array_equal(DicingLaneSimulator(SimConfig(seed=5, fault_rate=0.3, **SMALL)).render(2, 7).pixels, fa[7])


def test_fault_draws_follow_rate_and_labels_follow_faults():
    sim = DicingLaneSimulator(SimConfig(seed=1, fault_rate=0.05))
    faults = [sim.fault_at(lane, t) for lane in range(400) for t in range(10)]
    hit = [f for f in faults if f is not None]
    assert 0.04 < len(hit) / len(faults) < 0.06
    assert {f.kind for f in hit} == set(KINDS)
    assert all(0.05 <= f.magnitude <= 1 for f in hit)
    for f in hit[:20]:
        lb = label(3, f)
        assert lb == {"index": 3, "fault": f.fault, "kind": f.kind, "magnitude": round(f.magnitude, 4),
                      "visible": round(f.magnitude, 4) >= VISIBILITY_FLOOR}
    assert label(0, None) == {"index": 0, "fault": "none", "kind": "none", "magnitude": 0.0, "visible": False}


def test_auto_faults_are_what_render_injects():
    sim = DicingLaneSimulator(SimConfig(seed=3, fault_rate=0.25, **SMALL))
    frames, labels, cleans = sim.sequence(0, 10)
    for t, lb in enumerate(labels):
        fault = sim.fault_at(0, t)
        assert lb == label(t, fault)
        if fault is None:
            assert t not in cleans
        else:  # the clean frame is the same frame without the fault
            assert np.array_equal(cleans[t], sim.render(0, t, fault=None).pixels)
            assert not np.array_equal(cleans[t], frames[t])
    assert cleans, "seed 3 lane 0 has faulty frames at rate 0.25"


def _laplacian_energy(img):
    return float(np.var(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F)))


@pytest.mark.parametrize("kind", KINDS)
def test_each_fault_kind_changes_the_frame_the_way_its_label_says(kind):
    sim = DicingLaneSimulator(SimConfig(seed=2, noise=False, **SMALL))
    clean = sim.render(1, 4, fault=None).pixels.astype(np.float32)
    faulty = sim.render(1, 4, fault=Fault(kind, 0.8, angle=0.3, phase=1.0, period=0.2)).pixels.astype(np.float32)
    if kind in ("blur", "defocus"):
        assert _laplacian_energy(faulty) < 0.5 * _laplacian_energy(clean)
    elif kind == "jitter":  # a pure shift of the scene by 0.8 * 40 um at 3 um/px, direction 0.3 rad
        (dx, dy), _ = cv2.phaseCorrelate(clean, faulty)
        d = 0.8 * FAULT_SCALES["jitter"] / sim.config.um_per_px
        assert abs(-dx - d * np.cos(0.3)) < 1.0 and abs(-dy - d * np.sin(0.3)) < 1.0
    elif kind == "gain":  # phase 1.0 < pi: brighter
        assert faulty.mean() > clean.mean() * 1.2
    elif kind == "flicker":  # brightness bands across rows; columns unaffected
        ratio = faulty.mean(1) / clean.mean(1)
        assert ratio.max() - ratio.min() > 0.4
        assert np.allclose((faulty / np.maximum(clean, 1)).mean(0).std(), 0, atol=0.05)
    else:  # shadow: one side much darker than the other
        ratio = faulty / np.maximum(clean, 1)
        assert ratio.min() < 0.5 and np.percentile(ratio, 95) > 0.97


def test_magnitude_below_floor_is_subtle_and_above_is_not():
    sim = DicingLaneSimulator(SimConfig(seed=2, noise=False, **SMALL))
    clean = sim.render(0, 2, fault=None).pixels.astype(np.float32)
    for kind in ("gain", "defocus"):
        diffs = [np.abs(sim.render(0, 2, fault=Fault(kind, m, phase=1.0)).pixels - clean).mean() for m in (0.05, 0.2, 1.0)]
        assert diffs[0] < diffs[1] < diffs[2]


def test_frames_shift_by_the_stage_step():
    sim = DicingLaneSimulator(SimConfig(seed=4, **SMALL))
    step_px = sim.config.step_um / sim.config.um_per_px
    frames = [sim.render(0, t, fault=None).pixels.astype(np.float32) for t in range(4)]
    for a, b in zip(frames, frames[1:]):
        (dx, dy), response = cv2.phaseCorrelate(a, b)
        assert abs(dx + step_px) < 0.5 and abs(dy) < 0.5 and response > 0.3


def test_kerf_changes_beyond_the_shift_and_the_rest_does_not():
    """Noise- and vignetting-free: undo the 20 px shift; dies and street are identical, the kerf region is not."""
    sim = DicingLaneSimulator(SimConfig(seed=0, noise=False, vignetting=0.0, **SMALL))
    s = int(round(sim.config.step_um / sim.config.um_per_px))
    H = sim.config.height
    band = slice(H // 2 - 25, H // 2 + 25)  # +-75 um around the street centre: kerf, chips, debris
    changed_kerf = 0
    for t in range(9):
        a = sim.render(0, t, fault=None).pixels.astype(np.int16)
        b = sim.render(0, t + 1, fault=None).pixels.astype(np.int16)
        diff = np.abs(a[:, s:] - b[:, :-s])
        outside = np.concatenate([diff[: H // 2 - 55], diff[H // 2 + 55:]])  # beyond +-165 um
        assert np.percentile(outside, 99.9) == 0
        changed_kerf += int((diff[band] > 12).sum())
    assert changed_kerf > 100


def test_bit_depths_and_exposure():
    frame8 = DicingLaneSimulator(SimConfig(seed=1, **SMALL)).render(0, 0, fault=None).pixels
    frame12 = DicingLaneSimulator(SimConfig(seed=1, bit_depth=12, **SMALL)).render(0, 0, fault=None).pixels
    frame16 = DicingLaneSimulator(SimConfig(seed=1, bit_depth=16, **SMALL)).render(0, 0, fault=None).pixels
    assert frame8.dtype == np.uint8 and frame12.dtype == frame16.dtype == np.uint16
    assert frame12.max() <= 4095 and frame16.max() > 4095
    assert abs(frame12.mean() / 4095 - frame8.mean() / 255) < 0.01
    bright = DicingLaneSimulator(SimConfig(seed=1, exposure=2.0, **SMALL)).render(0, 0, fault=None).pixels
    assert bright.mean() > 1.6 * frame8.mean()
    with pytest.raises(ValueError, match="bit_depth"):
        SimConfig(bit_depth=10).validate()


def test_truth_round_trip_and_errors(tmp_path):
    sim = DicingLaneSimulator(SimConfig(seed=3, fault_rate=0.25, **SMALL))
    _, labels, cleans = sim.sequence(0, 10)
    write_truth(tmp_path, labels, cleans, sim.config)
    truth = load_truth(tmp_path)
    assert truth.labels == labels
    assert [lb["index"] for lb in truth.faulty()] == sorted(cleans)
    for i in cleans:
        assert np.array_equal(truth.clean(i), cleans[i])
    assert truth.config["config"]["seed"] == 3
    (tmp_path / "truth" / "labels.jsonl").write_text(json.dumps({"index": 0, "fault": "boom"}) + "\n")
    with pytest.raises(ValueError, match=r"labels\.jsonl:1: malformed"):
        load_truth(tmp_path)
    with pytest.raises(ValueError, match="no ground truth"):
        load_truth(tmp_path / "nowhere")
