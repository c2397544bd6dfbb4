"""The throughput measures in curation.pipeline (per-process malloc policy, sequences curated on
threads inside a shard) change speed only: the same bytes come out."""

import subprocess
import sys

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
        monkeypatch.setattr(pipeline, "SEQUENCE_THREADS", threads)
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
