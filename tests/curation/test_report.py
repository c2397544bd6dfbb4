"""The QC report: pictures of flagged frames made by the curate workers equal those read back from
the dataset (the path a resumed run takes for shards written before the interruption)."""

import re

from curation.config import CurateConfig
from curation.pipeline import curate
from curation.plan import build_plan
from curation.report import write_report
from curation_helpers import write_run

# a vibration fault, an illumination fault, a dropped frame, and a sequence with too many bad frames
FAULTS = {(0, 4): ("blur", 2.0), (1, 0): ("gain", 0.75), (3, 2): ("blur", 2.5), (3, 5): ("gain", 1.4),
          (3, 7): ("jitter", 6.0)}


def test_worker_thumbnails_equal_those_read_back(tmp_path):
    write_run(tmp_path / "raw" / "run-a", lanes=5, faults=FAULTS, drop={(2, 9)}, seed=4)
    cfg = CurateConfig(sequences_per_shard=2)
    r = curate(tmp_path / "raw", tmp_path / "out.zarr", cfg, workers=1, progress=False, log=lambda m: None)
    made_by_workers = r.report_html.read_text()
    read_back = tmp_path / "again.html"
    write_report(r.out, build_plan(tmp_path / "raw", cfg), cfg, read_back, tmp_path / "again.json")
    images = re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", made_by_workers)
    # four pictures per flagged frame at most: neighbours, original, reconstruction
    assert len(images) >= 3 * len(r.summary["flagged_frames"]) >= 3 * 6
    assert r.summary["splits"]["excluded"] == 1 and r.summary["flags"]["missing"] == 1
    assert "<span class=na>—</span>" in made_by_workers  # the dropped frame has no original
    assert read_back.read_text() == made_by_workers


def test_the_report_says_why_each_frame_was_flagged(tmp_path):
    """Each flagged frame names the score(s) that fired with value, centre, threshold and deviation;
    the counts note frames that carry both flags."""
    import json

    from chdl.dataset import open_dataset  # noqa: F401  (the dataset must be complete for the report)

    faults = {(0, 4): ("blur", 2.0), (1, 0): ("gain", 0.75), (2, 6): ("jitter", 5.0)}
    write_run(tmp_path / "raw" / "run-a", lanes=4, faults=faults, seed=4)
    r = curate(tmp_path / "raw", tmp_path / "out.zarr", CurateConfig(), workers=1, progress=False, log=lambda m: None)
    summary = json.loads(r.report_json.read_text())
    by_frame = {(f["sequence"], f["t"]): f for f in summary["flagged_frames"]}
    assert set(by_frame) == set(faults)
    expected = {(0, 4): "sharpness", (1, 0): "brightness", (2, 6): "misregistration_px"}
    for key, score in expected.items():
        why = by_frame[key]["why"]
        assert score in [w["score"] for w in why], (key, why)
        for w in why:
            assert abs(w["deviation"]) > w["threshold"] and w["times_threshold"] > 1
            assert w["deviation"] == round(w["value"] - w["center"], 5) or abs(w["deviation"] - (w["value"] - w["center"])) < 1e-4
    assert summary["both_vibration_and_illumination"] == 0 and "carry both" in summary["flags_note"]
    html = r.report_html.read_text()
    assert "fired: sharpness" in html and "threshold" in html


def test_the_report_defines_its_flags_and_labels_its_histogram_axes(tmp_path):
    """A reader of the HTML alone learns what each flag and score means, and what the histograms' axes are."""
    from curation import qc
    from curation.report import FLAG_MEANINGS, SCORE_MEANINGS

    write_run(tmp_path / "raw" / "run-a", lanes=2, faults={(0, 4): ("blur", 2.0)}, seed=4)
    r = curate(tmp_path / "raw", tmp_path / "out.zarr", CurateConfig(), workers=1, progress=False, log=lambda m: None)
    html = r.report_html.read_text()
    assert set(FLAG_MEANINGS) == set(r.summary["flags"]) and set(SCORE_MEANINGS) == set(qc.SCORE_NAMES)
    for flag, meaning in FLAG_MEANINGS.items():
        assert f"<td>{flag}</td><td>{r.summary['flags'][flag]}</td><td>{meaning}</td>" in html.replace("&#x27;", "'")
    svgs = re.findall(r"<svg.*?</svg>", html)
    assert len(svgs) == len(qc.SCORE_NAMES)
    for svg, name in zip(svgs, qc.SCORE_NAMES):
        assert f">{name}<" in svg and f"deviation ({SCORE_MEANINGS[name][0]})" in svg and "frames (log, max " in svg


def test_histograms_count_the_extremes_apart_instead_of_drawing_them_into_the_edge_bins(tmp_path):
    """The histogram's range is robust, so a flagged frame far out (blur: sharpness ~ -0.5 on a -0.24..0.005 axis)
    was drawn into the first bin as if it sat at the axis end. Now it is counted apart and written at the end."""
    import numpy as np

    from curation import qc

    write_run(tmp_path / "raw" / "run-a", lanes=3, faults={(0, 4): ("blur", 3.0)}, seed=4)
    r = curate(tmp_path / "raw", tmp_path / "out.zarr", CurateConfig(), workers=1, progress=False, log=lambda m: None)
    h = r.summary["histograms"]["sharpness"]
    k = qc.SCORE_NAMES.index("sharpness")
    dev = np.array([f["scores"]["sharpness"] for f in r.summary["flagged_frames"]]) - \
        r.summary["runs"][0]["baseline"]["center"]["sharpness"]
    assert dev.min() < h["edges"][0] and h["below"] >= 1  # the blurred frame is left of the drawn range
    assert sum(h["counts"]) + h["below"] + h["above"] == 3 * 10  # every frame counted once
    svg = re.findall(r"<svg.*?</svg>", r.report_html.read_text())[k]
    assert f"◀ {h['below']} below" in svg


def test_why_lists_only_what_counts_as_fired_and_says_why_the_rest_does_not():
    """The report listed contrast as "fired" on a frame flagged for vibration alone (contrast does not count where
    sharpness fired: blur lowers contrast), and sharpness on an illumination frame under the 3x rule."""
    import numpy as np

    from curation import qc
    from curation.report import why_flagged

    centre, thr = np.zeros(6), np.array([0.08, 1.0, 0.035, 0.10, 0.10, 0.045])
    blur = why_flagged(np.array([-0.2, 0.1, 0.0, 0.15, 0.0, 0.0]), centre, thr)  # sharpness and contrast beyond
    assert [(w["score"], w["counted"]) for w in blur] == [("sharpness", True), ("contrast", False)]
    assert blur[1]["note"].startswith("not counted: sharpness fired too")
    vib, ill = qc.decide(np.array([[-0.2, 0.1, 0.0, 0.15, 0.0, 0.0]]), qc.Baseline(list(centre), [0.0] * 6), thr)
    assert vib[0] and not ill[0]  # what the flags say, and the report with them
    flicker = why_flagged(np.array([-0.1, 0.0, 0.0, 0.0, 0.0, 0.09]), centre, thr)  # banding 2x, sharpness 1.25x
    assert [(w["score"], w["counted"]) for w in flicker] == [("banding", True), ("sharpness", False)]
    assert "beyond 3x its threshold" in flicker[1]["note"]
    zero = why_flagged(np.array([-0.1, 0.0, 0.0, 0.0, 0.0, 0.0]), centre, np.zeros(6))  # a config with floors 0
    assert zero[0]["score"] == "sharpness" and zero[0]["times_threshold"] is None  # (was 87010279297.8x)


def test_a_missing_frame_says_why_it_is_missing(tmp_path):
    """A dropped frame was listed with "why": [] (its reason only in the warnings)."""
    write_run(tmp_path / "raw" / "run-a", lanes=2, drop={(1, 3)}, seed=4)
    r = curate(tmp_path / "raw", tmp_path / "out.zarr", CurateConfig(), workers=1, progress=False, log=lambda m: None)
    item = next(f for f in r.summary["flagged_frames"] if (f["sequence"], f["t"]) == (1, 3))
    assert item["why"] == [] and "dropped" in item["missing"], item
    assert f"missing: {item['missing']}" in r.report_html.read_text()


def test_counts_per_run_and_totals(tmp_path):
    """Each run's row counts its own sequences' exclusions and flags (not every run's); ``frames`` is N * T;
    ``flagged_fraction`` counts vibration or illumination flags only (a missing frame is not one); and a frame
    flagged at t = 0 has no previous frame (not the sequence's last frame shown as its neighbour)."""
    import json

    from chdl.dataset import FLAG_ILLUMINATION, FLAG_VIBRATION, open_dataset
    from curation_helpers import T

    write_run(tmp_path / "raw" / "run-a", lanes=5, faults=FAULTS, drop={(2, 9)}, seed=4)
    write_run(tmp_path / "raw" / "run-b", lanes=3, seed=2)  # clean
    r = curate(tmp_path / "raw", tmp_path / "out.zarr", CurateConfig(), workers=1, progress=False, log=lambda m: None)
    summary = json.loads(r.report_json.read_text())
    runs = {run["run_id"]: run for run in summary["runs"]}
    assert set(runs) == {"run-a", "run-b"}
    assert runs["run-a"]["sequences"] == 5 and runs["run-b"]["sequences"] == 3
    for key in ("excluded", "vibration", "illumination", "reconstructed", "missing"):
        assert runs["run-b"][key] == 0, (key, runs["run-b"])
    assert runs["run-a"]["excluded"] == 1 and runs["run-a"]["missing"] == 1
    assert runs["run-a"]["vibration"] >= 3 and runs["run-a"]["illumination"] >= 2, runs["run-a"]
    for key in ("vibration", "illumination", "reconstructed", "missing"):
        assert summary["flags"][key] == runs["run-a"][key]  # the totals: run-b adds none
    assert summary["splits"]["excluded"] == 1
    N = summary["sequences"]
    assert N == 8 and summary["frames_per_sequence"] == T and summary["frames"] == N * T
    flags = open_dataset(r.out).group["qc_flags"][:]
    vib_or_ill = int(((flags & (FLAG_VIBRATION | FLAG_ILLUMINATION)) != 0).sum())
    assert summary["flags"]["missing"] == 1  # present, and not counted as flagged
    assert summary["flagged_fraction"] == round(vib_or_ill / (N * T), 6) > 0
    # the illumination fault at lane 1, t 0: the first cell (previous frame) is the placeholder, the next is a picture
    html = r.report_html.read_text()
    row = re.search(r"<tr><td>seq 1 t 0<br>.*?</tr>", html).group(0)
    cells = re.findall(r"<td>(<img src=.*?>|<span class=na>—</span>)</td>", row)
    assert len(cells) == 4 and cells[0] == "<span class=na>—</span>" and cells[3].startswith("<img"), [c[:40] for c in cells]
