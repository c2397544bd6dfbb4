"""SIGKILL at any moment of ``chdl curate`` (dataset creation included), then a rerun: the result equals an
uninterrupted run byte for byte (tools/curate_kill_sweep.py; the full sweep of every write is recorded in
docs/curation.md, here every 8th write of a small recording with a reconstructed frame and two shards)."""

import subprocess
import sys
from pathlib import Path

from curation_helpers import write_run

TOOL = Path(__file__).resolve().parents[2] / "tools" / "curate_kill_sweep.py"


def test_kill_at_writes_then_rerun_equals_an_uninterrupted_run(tmp_path):
    write_run(tmp_path / "raw" / "r", lanes=2, faults={(0, 4): ("blur", 2.0)}, drop={(1, 3)})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 1\n")
    p = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "raw"), str(tmp_path / "work"), "--config", str(cfg),
                        "--every", "8"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    killed, writes = int(last.split()[0]), int(last.split()[4])
    assert writes > 40 and killed == len(range(1, writes + 1, 8)) and last.endswith("0 failures"), last
