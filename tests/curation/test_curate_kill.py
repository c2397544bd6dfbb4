"""SIGKILL at any moment of ``chdl curate`` (dataset creation included), then a rerun: the result equals an
uninterrupted run byte for byte (tools/curate_kill_sweep.py; the full sweep of every write is recorded in
docs/curation.md, here every 8th write of a small recording with a reconstructed frame and two shards)."""

import subprocess
import sys
from pathlib import Path

from curation_helpers import write_run
from process_helpers import alive, children

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


def test_the_pool_workers_die_with_a_killed_curate(tmp_path):
    """SIGKILL of `chdl curate --workers 2`: its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG) instead of
    finishing their shard and printing BrokenPipeError tracebacks to the dead parent."""
    import os
    import signal
    import time

    write_run(tmp_path / "raw" / "r", lanes=64)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 32\n")  # two shards: each worker is inside its shard when the parent dies
    proc = subprocess.Popen([sys.executable, "-m", "chdl", "curate", str(tmp_path / "raw"), str(tmp_path / "d.zarr"),
                             "--config", str(cfg), "--workers", "2", "-q"], stderr=subprocess.PIPE, text=True)

    deadline = time.monotonic() + 60
    while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:  # the shard pool (2 workers) is up
        time.sleep(0.02)
    assert len(workers) >= 2, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert [w for w in workers if alive(w)] == [] and "BrokenPipeError" not in proc.stderr.read()


def test_a_killed_pool_worker_ends_curate_with_one_line_and_a_rerun_finishes(tmp_path):
    """SIGKILL of one of `chdl curate --workers 2`'s workers (an OOM kill, a crash in native code): curate stops with
    one line naming what happened and how to go on (multiprocessing.Pool lost the task and waited for ever: the
    bar froze at 73 %), and the rerun completes the dataset."""
    import os
    import signal
    import time

    write_run(tmp_path / "raw" / "r", lanes=64)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sequences_per_shard: 8\n")  # eight shards: the pool is busy when a worker dies
    cmd = [sys.executable, "-m", "chdl", "curate", str(tmp_path / "raw"), str(tmp_path / "d.zarr"), "--config", str(cfg),
           "--workers", "2", "-q"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "d.zarr" / "zarr.json").exists() and time.monotonic() < deadline:  # the shard phase
        time.sleep(0.02)
    while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(workers) >= 2, proc.communicate()
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # (it hung here)
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [f"Error: a worker process died (killed, out of memory, or a crash in native "
                                        f"code); {tmp_path / 'd.zarr'} keeps the shards finished so far: rerun the "
                                        "same command to resume"], err
    assert [w for w in workers if alive(w)] == []
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    from chdl.dataset import open_dataset

    assert open_dataset(tmp_path / "d.zarr").n_sequences == 64
