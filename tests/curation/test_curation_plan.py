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


def test_grouping_windows_and_missing_positions(tmp_path):
    run = tmp_path / "r"
    write_run(run, lanes=3, drop={(0, 1)}, skip={(2, 9)})
    m = json.loads((run / "manifest.json").read_text())
    plan = build_plan(run, CurateConfig())
    assert len(plan.sequences) == 3 and plan.height == 120 and plan.width == 160 and plan.pixel_format == "Mono8"
    s0, s2 = plan.sequences[0], plan.sequences[2]
    assert s0.records[1] is None and s0.missing_reasons == {1: "dropped by the camera/host"}
    assert s2.missing_reasons == {9: "position never recorded"}
    assert s2.position_um[9] == m["plan"]["positions_um"][9]  # from the plan when never recorded
    assert [r.position_index for r in plan.sequences[1].records] == list(range(T))
    assert any("position 9 never recorded" in w for w in plan.warnings)
    assert not any("dropped" in w for w in plan.warnings)  # a dropped frame is routine, not a warning


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
