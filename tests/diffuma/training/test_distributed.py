"""The trainer's multi-process path, for real: torchrun with two CPU processes (gloo), DDP and the
DistributedSampler, rank-0 logging and checkpoints, and resume under torchrun. Loopback only."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffuma.training.checkpoint import load_checkpoint

WORKER = Path(__file__).parent / "ddp_worker.py"
CONFIG = {"model": {"name": "standin", "preset": "tiny"},
          "run": {"epochs": 3, "batch_size": 2, "num_workers": 0, "lr": 3e-3, "warmup_steps": 1, "ema_decay": 0.8,
                  "checkpoint_every_steps": 2, "val_every_epochs": 1}}


def torchrun(data, out, mode, stop=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           json.dumps(CONFIG), str(data), str(out), mode] + ([str(stop)] if stop is not None else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [torch.load(out / f"final_rank{k}.pt", weights_only=True) for k in range(2)]


def steps(run):
    with open(run / "steps.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_torchrun_two_processes_train_resume_and_log_once(tiny_dataset, tmp_path):
    # 8 training sequences, 2 ranks x batch 2: 2 steps an epoch, 6 in all
    ref = torchrun(tiny_dataset, tmp_path / "ref", "fresh")
    assert [r["step"] for r in ref] == [6, 6] and ref[0]["world_size"] == 2
    for k, v in ref[0]["model"].items():  # DDP keeps the replicas identical
        assert torch.equal(v, ref[1]["model"][k]), k
    rows = steps(tmp_path / "ref")
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 7)]  # rank 0 alone writes the log
    # the logged loss is the mean over both ranks' samples (it was rank 0's own half)
    local = [json.loads((tmp_path / "ref" / f"local_losses_rank{k}.json").read_text()) for k in range(2)]
    assert local[0] != local[1]
    assert [float(r["loss"]) for r in rows] == pytest.approx([(a + b) / 2 for a, b in zip(*local)], rel=1e-6)
    ckpt = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 6 and len(ckpt["rng_per_rank"]) == 2  # every rank's RNG state is saved

    # "killed" after 3 steps (last checkpoint at step 2, one batch into epoch 2), resumed under torchrun
    torchrun(tiny_dataset, tmp_path / "run", "fresh", stop=3)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2
    resumed = torchrun(tiny_dataset, tmp_path / "run", "resume")
    assert resumed[0]["step"] == 6
    for k, v in ref[0]["model"].items():
        assert torch.equal(v, resumed[0]["model"][k]), k
        assert torch.equal(v, resumed[1]["model"][k]), k
    assert [r["loss"] for r in steps(tmp_path / "run")] == [r["loss"] for r in rows]


@pytest.mark.skipif(not torch.distributed.is_available() or not sys.platform.startswith("linux"),
                    reason="torch built without distributed / PR_SET_PDEATHSIG is Linux's")
def test_the_ranks_stop_when_their_launcher_is_killed(tiny_dataset, tmp_path):
    """kill -9 of torchrun left both ranks (in sessions of their own) training to the end, unwatched, holding the
    run folder's lock: a --resume was refused as "in use". They now stop as on SIGTERM, checkpointing the step."""
    import signal
    import time

    cfg = {**CONFIG, "run": {**CONFIG["run"], "epochs": 40, "checkpoint_every_steps": 0}}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1",
           "STANDIN_STEP_SLEEP": "0.2"}
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 str(WORKER), json.dumps(cfg), str(tiny_dataset), str(out), "fresh"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ((out / "steps.csv").exists() and len((out / "steps.csv").read_text().splitlines()) >= 3):
        assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    launcher.kill()
    launcher.wait()

    def ranks() -> list[str]:
        r = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
        return r.stdout.split()

    deadline = time.monotonic() + 60
    while ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = ranks()
    for pid in left:  # (never leave them running, whatever the assertion says)
        os.kill(int(pid), signal.SIGKILL)
    assert not left, "ranks still running a minute after their launcher was killed"
    step = load_checkpoint(out / "checkpoints" / "last.pt")["step"]
    assert 2 <= step < 80  # checkpointed where they stopped (80 = 40 epochs x 2 steps), not run to the end
