"""Planning: grouping into lane sequences, missing positions, the lane-block split; Mono16 end to end."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from chdl.cli import main
from chdl.dataset import SPLIT_TRAIN, SPLIT_VAL, open_dataset
from curation.config import CurateConfig
from curation.plan import Plan, RunInfo, SequencePlan, assign_split, build_plan
from curation.synthetic import SynthSpec
from curation_helpers import T, write_run


def _fake_plan(lanes_per_run: dict[str, int]) -> Plan:
    runs, seqs = [], []
    for r, (rid, n) in enumerate(lanes_per_run.items()):
        runs.append(RunInfo(f"/x/{rid}", rid, True, n * T))
        for lane in range(n):
            present = [object()] * T  # stands for T frame records (nothing missing)
            seqs.append(SequencePlan(len(seqs), r, lane, 0, present, [0.0] * T, [-1] * T, {}))
    return Plan(runs, seqs, 8, 8, "Mono8", [])


def test_split_is_even_deterministic_and_keeps_lane_blocks_together():
    cfg = CurateConfig()
    a, b = _fake_plan({"r1": 37, "r2": 23}), _fake_plan({"r1": 37, "r2": 23})
    assign_split(a, cfg)
    assign_split(b, cfg)
    sa = [s.split for s in a.sequences]
    assert sa == [s.split for s in b.sequences]  # deterministic
    n_val = sum(x == SPLIT_VAL for x in sa)
    assert abs(n_val - len(sa) / 2) <= cfg.split.block_lanes  # even, to within one block
    blocks = {}
    for s in a.sequences:
        blocks.setdefault((s.run, s.lane // 2), set()).add(s.split)
    assert all(len(v) == 1 for v in blocks.values())  # a block never straddles the split
    # a different seed deals the blocks differently
    cfg.split.seed = 7
    assign_split(a, cfg)
    assert [s.split for s in a.sequences] != sa
    cfg.split.val_fraction = 0.0
    assign_split(a, cfg)
    assert all(s.split == SPLIT_TRAIN for s in a.sequences)


def _two_way_split_before_test(plan: Plan, cfg: CurateConfig) -> list[int]:
    """The train/val rule as it was before the test split (2026-12-02), verbatim: the oracle that datasets curated
    before then are curated the same now."""
    import hashlib

    blocks = {}
    for s in plan.sequences:
        blocks.setdefault((s.run, s.lane // cfg.split.block_lanes), []).append(s)
    order = lambda key: hashlib.sha256(f"{cfg.split.seed}:{plan.runs[key[0]].run_id}:{key[1]}".encode()).hexdigest()
    out, frac, n_val, n_all = {}, cfg.split.val_fraction, 0, 0
    for key in sorted(blocks, key=order):
        members = blocks[key]
        n = sum(s.n_missing <= cfg.max_bad_frames for s in members)
        total = n_all + n
        to_val = abs(n_val + n - frac * total) < abs(n_val - frac * total)
        out.update({s.index: SPLIT_VAL if to_val else SPLIT_TRAIN for s in members})
        n_val += n if to_val else 0
        n_all = total
    return [out[s.index] for s in plan.sequences]


@pytest.mark.parametrize("val_fraction", [0.5, 0.2, 0.3, 1 / 3, 0.0, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 5])
def test_without_a_test_split_the_split_is_the_one_from_before(val_fraction, seed):
    cfg = CurateConfig()
    cfg.split.val_fraction, cfg.split.seed, cfg.split.block_lanes = val_fraction, seed, 1 + seed % 3
    plan = _fake_plan({"r1": 37, "r2": 23, "r3": 5})
    plan.sequences[4].records[:] = [None] * T  # all missing: it does not count towards the balance
    assign_split(plan, cfg)
    assert [s.split for s in plan.sequences] == _two_way_split_before_test(plan, cfg)


def test_sequences_that_will_be_excluded_do_not_count_towards_the_shares():
    """A run whose lanes all miss too many frames: its blocks are dealt, but only usable sequences balance the split
    (counting them, val among the usable ones drifted far from val_fraction)."""
    for seed in range(6):
        for dead, good in ((30, 30), (10, 40), (60, 20)):
            cfg = CurateConfig()
            cfg.split.seed = seed
            plan = _fake_plan({"dead": dead, "good": good})
            for s in plan.sequences[:dead]:
                s.records[:] = [None] * T
            assign_split(plan, cfg)
            usable = [s.split for s in plan.sequences[dead:]]
            # within half a block of the target (counting the dead ones too, up to three sequences off)
            assert abs(usable.count(SPLIT_VAL) - 0.5 * len(usable)) <= 1, (seed, dead, good)


def test_a_test_split_takes_its_share_in_whole_blocks_and_never_changes_with_val():
    from chdl.dataset import SPLIT_TEST

    cfg = CurateConfig()
    cfg.split.val_fraction, cfg.split.test_fraction = 0.2, 0.2
    plan = _fake_plan({"r1": 60, "r2": 40})
    assign_split(plan, cfg)
    got = [s.split for s in plan.sequences]
    for code, share in ((SPLIT_TEST, 0.2), (SPLIT_VAL, 0.2), (SPLIT_TRAIN, 0.6)):
        assert abs(got.count(code) - share * len(got)) <= cfg.split.block_lanes, (code, got.count(code))
    blocks = {}
    for s in plan.sequences:
        blocks.setdefault((s.run, s.lane // 2), set()).add(s.split)
    assert all(len(v) == 1 for v in blocks.values())  # a block never straddles two splits
    # the test split is dealt first, so other val fractions leave it where it was: a held-out set stays held out
    cfg.split.val_fraction = 0.4
    assign_split(plan, cfg)
    assert [s.split == SPLIT_TEST for s in plan.sequences] == [x == SPLIT_TEST for x in got]


def test_fractions_that_leave_nothing_to_train_on_are_refused():
    from curation.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=r"split\.test_fraction: .*val_fraction \+ test_fraction \(0\.6 \+ 0\.5\) exceeds 1"):
        validate_config({"split": {"val_fraction": 0.6, "test_fraction": 0.5}}, "c.yaml")


def test_grouping_windows_and_missing_positions(tmp_path):
    run = tmp_path / "r"
    write_run(run, lanes=3, drop={(0, 1)}, skip={(2, 9), (1, 2), (1, 3), (1, 4), (1, 7)})
    m = json.loads((run / "manifest.json").read_text())
    plan = build_plan(run, CurateConfig())
    assert len(plan.sequences) == 3 and plan.height == 120 and plan.width == 160 and plan.pixel_format == "Mono8"
    s0, s2 = plan.sequences[0], plan.sequences[2]
    assert s0.records[1] is None and s0.missing_reasons == {1: "dropped by the camera/host"}
    assert s2.missing_reasons == {9: "position never recorded"}
    assert s2.position_um[9] == m["plan"]["positions_um"][9]  # from the plan when never recorded
    assert [r.position_index for r in plan.sequences[1].records if r is not None] == [0, 1, 5, 6, 8, 9]
    # one line a window (a lane cut off was one line a position)
    assert [w.split(": ", 1)[1] for w in plan.warnings if "never recorded" in w] == [
        "lane 1 positions 2-4, 7 (4 of 10) never recorded; treated as missing",
        "lane 2 position 9 never recorded; treated as missing"]
    assert not any("dropped" in w for w in plan.warnings)  # a dropped frame is routine, not a warning


def test_a_position_recorded_twice_and_a_lane_outside_the_plan_are_warned(tmp_path):
    """Frame 7 of lane 0 relabelled position 6 replaced frame 6 without a word (the check compared a (lane,
    position) pair with the lane's positions), and a record of lane 9 in a 3-lane plan made a sequence of its own."""
    run = tmp_path / "r"
    write_run(run, lanes=3)
    index = run / "frames.jsonl"
    recs = [json.loads(line) for line in index.read_text().splitlines()]
    recs[7]["position_index"] = 6
    recs[15]["lane"] = 9
    index.write_text("".join(json.dumps(r) + "\n" for r in recs))
    plan = build_plan(run, CurateConfig())
    assert f"{index}: lane 0 position 6 recorded twice; using frame 7" in plan.warnings
    assert f"{index}: frame 15 has lane 9, outside the plan (3 lanes); ignored" in plan.warnings
    assert sorted({s.lane for s in plan.sequences}) == [0, 1, 2]
    assert plan.sequences[0].records[6].index == 7 and plan.sequences[0].records[7] is None


def test_twenty_positions_make_two_sequences_per_lane(tmp_path):
    run = tmp_path / "r"
    write_run(run, lanes=2)
    # relabel: lane 1's frames become positions 10..19 of lane 0
    recs = [json.loads(x) for x in (run / "frames.jsonl").read_text().splitlines()]
    for r in recs:
        if r["lane"] == 1:
            r["lane"], r["position_index"] = 0, r["position_index"] + T
    (run / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = json.loads((run / "manifest.json").read_text())
    m["plan"]["positions"] = 2 * T
    m["plan"]["positions_um"] = [50.0 * p for p in range(2 * T)]  # the two must agree (raw.validate_manifest)
    (run / "manifest.json").write_text(json.dumps(m))
    plan = build_plan(run, CurateConfig())
    assert [(s.lane, s.window) for s in plan.sequences] == [(0, 0), (0, 1)]
    assert [r.index for r in plan.sequences[1].records] == list(range(T, 2 * T))


@pytest.mark.parametrize("fmt,top", [("Mono16", 65535), ("Mono12", 4095)])
def test_mono16_end_to_end(tmp_path, fmt, top):
    spec = SynthSpec(height=120, width=160, step_px=8.0, max_value=top)
    write_run(tmp_path / "r16", lanes=2, faults={(1, 5): ("blur", 2.0)}, spec=spec, fmt=fmt)
    out = tmp_path / "d16.zarr"
    r = CliRunner().invoke(main, ["curate", str(tmp_path / "r16"), str(out), "-q"])
    assert r.exit_code == 0, r.output
    ds = open_dataset(out)
    assert ds.frames.dtype == np.uint16 and ds.attrs["pixel_format"] == fmt and ds.attrs["max_value"] == top
    assert ds.frames[:].max() <= top
    flagged = np.argwhere(ds.qc_flags & 3)
    assert flagged.tolist() == [[1, 5]]
    assert ds.frames[1, 5].max() > 255  # reconstructed in the 16-bit range


BAD_VALUES = ["x", 1.5, float("nan"), float("inf"), True, None, [], {}, -1, 0, 10**30]


def test_any_bad_value_in_any_metadata_key_is_an_error_naming_the_file_never_a_crash(tmp_path):
    """Every frame-record field and every manifest key the toolkit reads, set to each of a list of bad values:
    planning either succeeds (the value is legal there) or raises RawFormatError/PlanError naming the file;
    no other exception, no hang. The kind behind the issue's "lane": "one" and "file": 13 tracebacks."""
    from acquisition.raw import RawFormatError
    from curation.plan import PlanError

    run = tmp_path / "r"
    write_run(run, lanes=1)
    index, manifest = (run / "frames.jsonl").read_text(), json.loads((run / "manifest.json").read_text())
    record = json.loads(index.splitlines()[0])
    outcomes = {"ok": 0, "error": 0}

    def plan_once(what):
        try:
            build_plan(run, CurateConfig())
            outcomes["ok"] += 1
        except (RawFormatError, PlanError) as e:
            assert str(e).startswith(str(run)) and "\n" not in str(e), (what, str(e))
            outcomes["error"] += 1

    for key in record:
        for bad in BAD_VALUES:
            lines = index.splitlines()
            lines[0] = json.dumps({**record, key: bad})
            (run / "frames.jsonl").write_text("\n".join(lines) + "\n")
            plan_once(("record", key, bad))
    (run / "frames.jsonl").write_text(index)
    paths = [(k,) for k in ("schema", "status", "run_id", "frames", "settings", "plan")] + \
        [("settings", k) for k in manifest["settings"]] + [("plan", k) for k in manifest["plan"]]
    for path in paths:
        for bad in BAD_VALUES:
            m = json.loads(json.dumps(manifest))
            (m if len(path) == 1 else m[path[0]])[path[-1]] = bad
            (run / "manifest.json").write_text(json.dumps(m))
            plan_once(("manifest", path, bad))
    assert outcomes["error"] > 150 and outcomes["ok"] > 10, outcomes
