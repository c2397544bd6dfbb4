"""The trainer on CPU with a stand-in model (tests/diffuma/training/standin_model.py) and a real zarr dataset."""

import csv
import math

import pytest
import torch

from diffuma.training import TrainingDiverged, train_from_config
from diffuma.training.checkpoint import build_model_from_checkpoint, load_checkpoint
from diffuma.training.trainer import build_trainer, dynamics_title


def _config(model="standin", **run):
    base = {"epochs": 3, "batch_size": 3, "num_workers": 0, "lr": 3e-3, "warmup_steps": 1, "ema_decay": 0.8,
            "checkpoint_every_steps": 2}
    return {"model": {"name": model, "preset": "tiny"}, "run": {**base, **run}}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_lowers_loss_and_writes_the_run_folder(standin, tiny_dataset, tmp_path):
    out = train_from_config(_config(epochs=4), tiny_dataset, tmp_path / "run", progress=False)
    steps = _rows(out / "steps.csv")
    assert len(steps) == 4 * 3  # 8 train sequences, batch 3 -> 3 steps per epoch
    first = sum(float(r["loss"]) for r in steps[:3]) / 3
    last = sum(float(r["loss"]) for r in steps[-3:]) / 3
    assert last < 0.8 * first
    epochs = _rows(out / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3, 4]
    assert all(0 <= float(r["val_ssim"]) <= 1 and float(r["val_mse"]) > 0 for r in epochs)
    assert {"mse", "l1"} <= set(steps[0])  # the model's own loss logs are columns
    assert (out / "training_dynamics.png").stat().st_size > 1000
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "config.yaml").is_file()


def test_checkpoint_is_weights_only_and_rebuilds_the_model(standin, tiny_dataset, tmp_path):
    out = train_from_config(_config(epochs=1), tiny_dataset, tmp_path / "run", progress=False)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["epoch"] == 1 and state["batch_in_epoch"] == 0
    assert state["config"]["model"]["in_frames"] == 5 and state["config"]["model"]["height"] == 16
    assert state["config"]["run"]["lr"] == 3e-3 and isinstance(state["chdl_version"], str)
    assert {"model", "ema", "optimizer", "rng", "data"} <= set(state)
    model, used = build_model_from_checkpoint(load_checkpoint(out / "checkpoints" / "last.pt"), "model")
    assert used == "model"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k])
    ema, used = build_model_from_checkpoint(state)  # auto -> EMA weights, which differ from the raw ones
    assert used == "ema"
    assert not torch.equal(ema.inp.weight, model.inp.weight)


@pytest.mark.parametrize("stop_after, workers", [(4, 0), (5, 2)])
def test_resume_after_kill_mid_epoch_matches_uninterrupted_run(standin, tiny_dataset, tmp_path, stop_after, workers):
    cfg = _config(num_workers=workers)
    ref = build_trainer(cfg, tiny_dataset, tmp_path / "ref", progress=False)
    ref.fit()
    # "Kill" after stop_after steps: the last checkpoint is at step 4 (checkpoint_every_steps=2), i.e. one
    # batch into epoch 2; with stop_after=5 the fifth step is lost and must be redone identically.
    killed = build_trainer(cfg, tiny_dataset, tmp_path / "run", progress=False)
    killed.fit(stop_after_steps=stop_after)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["batch_in_epoch"] == 1
    resumed = build_trainer(None, tiny_dataset, tmp_path / "run", resume=True, progress=False)
    resumed.fit(resume=True)
    assert resumed.step == ref.step == 9
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in ref.ema.module.state_dict().items():
        assert torch.equal(v, resumed.ema.module.state_dict()[k]), k
    # The step log has each step once, with the same losses as the uninterrupted run.
    a, b = _rows(tmp_path / "ref" / "steps.csv"), _rows(tmp_path / "run" / "steps.csv")
    assert [r["step"] for r in b] == [str(i) for i in range(1, 10)]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    # TensorBoard shows each step once too, the redone step 5 with its redone loss (the killed run's is purged).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    tb.Reload()
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.*"))) == 2  # the killed run's and the resumed one's
    logged = tb.Scalars("train/loss")
    assert [e.step for e in logged] == list(range(1, 10))
    assert [e.value for e in logged] == pytest.approx([float(r["loss"]) for r in b], rel=1e-6)
    # The resumed epoch's train_loss averages all of its steps (the running sum is in the checkpoint).
    ea, eb = _rows(tmp_path / "ref" / "epochs.csv"), _rows(tmp_path / "run" / "epochs.csv")
    assert [r["train_loss"] for r in ea] == [r["train_loss"] for r in eb]
    assert float(eb[1]["train_loss"]) == pytest.approx(sum(float(r["loss"]) for r in b[3:6]) / 3, rel=1e-6)
    # Time runs on over the resume (elapsed_s continues from the checkpoint's, it does not restart at 0).
    for log in (b, eb):
        t = [float(r["elapsed_s"]) for r in log]
        assert t == sorted(t) and t[0] > 0, t


def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_an_existing_one(standin, tiny_dataset, tmp_path):
    train_from_config(_config(epochs=1), tiny_dataset, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_from_config(_config(epochs=1), tiny_dataset, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="run.lr"):
        train_from_config(_config(epochs=1, lr=1e-2), tiny_dataset, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume|not found"):
        train_from_config(_config(), tiny_dataset, tmp_path / "other", resume=True, progress=False)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(standin, tiny_dataset, tmp_path):
    cfg = _config()
    cfg["model"]["nan_at_step"] = 4  # the stand-in returns NaN at (0-based) step 4, i.e. the fifth step
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5 .*last\.pt \(step 4\)"):
        train_from_config(cfg, tiny_dataset, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_frame_counts_follow_the_dataset_unless_overridden(standin, tiny_dataset, tmp_path):
    t = build_trainer(_config(out_frames=1), tiny_dataset, tmp_path / "r", progress=False)
    assert (t.model.config.in_frames, t.model.config.out_frames) == (5, 1)
    x, y = t.train_set[0]
    assert x.shape == (5, 1, 16, 16) and y.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="model.in_frames 3 differs from the dataset's 5 .*run.in_frames"):
        build_trainer({"model": {"name": "standin", "preset": "tiny", "in_frames": 3}, "run": {}}, tiny_dataset,
                      tmp_path / "r2")
    with pytest.raises(ValueError, match="model.height 100 differs from the dataset's 16 .*at another size"):
        build_trainer({"model": {"name": "standin", "preset": "tiny", "height": 100}, "run": {}}, tiny_dataset,
                      tmp_path / "r3")
    # a run's own config.yaml (the dataset's values written out) starts a new run on the same dataset
    same = {"model": {"name": "standin", "preset": "tiny", "in_frames": 5, "out_frames": 1, "channels": 1,
                      "height": 16, "width": 16}, "run": {"out_frames": 1}}
    assert build_trainer(same, tiny_dataset, tmp_path / "r4", progress=False).model.config.height == 16


def test_max_steps_stops_mid_epoch_and_sets_schedule_length(standin, tiny_dataset, tmp_path):
    t = build_trainer(_config(max_steps=4, schedule="cosine", warmup_steps=0), tiny_dataset, tmp_path / "r",
                      progress=False)
    t.fit()
    assert t.step == 4 and t.total_steps == 4
    lrs = [float(r["lr"]) for r in _rows(tmp_path / "r" / "steps.csv")]
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 4


def test_the_progress_bar_counts_to_run_max_steps(standin, tiny_dataset, tmp_path, monkeypatch):
    """run.max_steps=4 at 3 steps an epoch and run.epochs=3: the bars said "epoch 1/3" and "epoch 2/3" and counted
    to 3 each, the second stopping at 1 of 3 (its ETA that of a whole epoch)."""
    import diffuma.training.trainer as trainer

    bars, real = [], trainer.tqdm

    def spy(*args, **kw):
        bars.append((kw["desc"], kw["total"], kw["initial"]))
        return real(*args, **{**kw, "disable": True})

    monkeypatch.setattr(trainer, "tqdm", spy)
    build_trainer(_config(max_steps=4), tiny_dataset, tmp_path / "r", progress=True).fit()
    assert bars == [("epoch 1/2", 3, 0), ("epoch 2/2", 1, 0)]
    bars.clear()
    build_trainer(_config(epochs=2), tiny_dataset, tmp_path / "full", progress=True).fit()
    assert bars == [("epoch 1/2", 3, 0), ("epoch 2/2", 3, 0)]


@pytest.mark.parametrize("max_steps, rows", [(2, [(1, 2)]), (4, [(1, 3), (2, 4)])])
def test_a_run_that_stops_mid_epoch_validates_its_final_weights(standin, tiny_dataset, tmp_path, max_steps, rows):
    """run.max_steps inside an epoch (3 steps an epoch here): the partial epoch gets its epochs.csv row with a
    validation at the last step, and best.pt exists even when no epoch was completed."""
    t = build_trainer(_config(max_steps=max_steps), tiny_dataset, tmp_path / "r", progress=False)
    t.fit()
    epochs = _rows(tmp_path / "r" / "epochs.csv")
    assert [(int(r["epoch"]), int(r["step"])) for r in epochs] == rows
    assert all(float(r["val_mse"]) > 0 for r in epochs)
    best = min(epochs, key=lambda r: float(r["val_mse"]))
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")["step"] == int(best["step"])
    # a --resume of the finished run trains nothing and keeps every row (it dropped the partial epoch's, for good)
    logs = {n: (tmp_path / "r" / n).read_bytes() for n in ("steps.csv", "epochs.csv")}
    again = build_trainer(None, tiny_dataset, tmp_path / "r", resume=True, progress=False)
    again.fit(resume=True)
    assert again.step == max_steps and {n: (tmp_path / "r" / n).read_bytes() for n in logs} == logs


def test_the_last_epoch_is_validated_whatever_the_cadence(standin, tiny_dataset, tmp_path):
    out = train_from_config(_config(epochs=3, val_every_epochs=2), tiny_dataset, tmp_path / "r", progress=False)
    epochs = _rows(out / "epochs.csv")
    assert [(int(r["epoch"]), bool(r["val_mse"])) for r in epochs] == [(1, False), (2, True), (3, True)]
    out = train_from_config(_config(epochs=2, val_every_epochs=0), tiny_dataset, tmp_path / "off", progress=False)
    assert not any(r["val_mse"] for r in _rows(out / "epochs.csv"))           # 0 = never, the end included
    assert not (out / "checkpoints" / "best.pt").exists()


def test_precision_other_than_fp32_is_refused_on_cpu(standin, tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        build_trainer(_config(precision="bf16", device="cpu"), tiny_dataset, tmp_path / "r", progress=False)


def test_real_sigkill_after_a_checkpoint_then_resume_matches(standin, tiny_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    cfg = _config(epochs=3, checkpoint_every_steps=1, num_workers=0, val_every_epochs=0)
    here = Path(__file__).parent
    # the same intra-op thread count as this process (an earlier test may have changed it): a float reduction
    # split over another number of threads rounds differently, and bit-identity is what is tested
    script = (f"import sys; sys.path.insert(0, {str(here)!r})\n"
              f"import torch; torch.set_num_threads({torch.get_num_threads()})\n"
              "from diffuma.models import registry\n"
              "registry.MODELS['standin'] = 'standin_model:StandIn'\n"
              "from diffuma.training import train_from_config\n"
              f"train_from_config({cfg!r}, {str(tiny_dataset)!r}, {str(tmp_path / 'run')!r}, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["step"]
    assert 1 <= killed_at < 9
    resumed = build_trainer(None, tiny_dataset, tmp_path / "run", resume=True, progress=False)
    resumed.fit(resume=True)
    ref = build_trainer(cfg, tiny_dataset, tmp_path / "ref", progress=False)
    ref.fit()
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def _wait_for(predicate, proc, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while not predicate() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize("signum, workers", [("SIGINT", 2), ("SIGTERM", 2), ("SIGTERM", 0), ("SIGHUP", 0)])
def test_ctrl_c_or_sigterm_checkpoints_the_last_step_and_the_resume_matches(standin, tiny_dataset, tmp_path, signum,
                                                                             workers):
    """A real `chdl train` process signalled mid-epoch with checkpoint_every_steps 0, the signal sent to its whole
    process group, loader workers included (as Ctrl-C in a terminal sends SIGINT, and a scheduler SIGTERM: the
    workers ignore SIGINT and die of SIGTERM): it writes last.pt at its last completed step, says so in one line
    and exits 130; the resumed run ends with the same weights and logs, bit for bit, as an uninterrupted one."""
    import os
    import re
    import signal
    import subprocess

    import yaml

    from train_helpers import standin_cli

    cfg = _config(epochs=4, checkpoint_every_steps=0, num_workers=workers)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen(standin_cli("train", "--data", tiny_dataset, "--config", tmp_path / "c.yaml", "--out", run,
                                        "-q", threads=torch.get_num_threads()),
                            env={**os.environ, "STANDIN_STEP_SLEEP": "0.1"},  # 12 steps of >= 0.1 s: a signal mid-run
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    steps = run / "steps.csv"
    _wait_for(lambda: steps.exists() and len(steps.read_text().splitlines()) >= 3, proc)  # 2 steps done
    os.killpg(proc.pid, getattr(signal, signum))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    m = re.fullmatch(r"interrupted at step (\d+); rerun with --resume to continue"  # (at an epoch's end:)
                     r"|interrupted at step (\d+), before its validation; rerun with --resume to validate and continue",
                     err.strip())
    assert m, err
    stopped_at = int(m.group(1) or m.group(2))
    assert (m.group(2) is not None) == (stopped_at % 3 == 0)  # (3 steps an epoch)
    assert 2 <= stopped_at < 12
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == stopped_at
    assert [int(r["step"]) for r in _rows(steps)] == list(range(1, stopped_at + 1))
    resumed = build_trainer(None, tiny_dataset, run, resume=True, progress=False)
    resumed.fit(resume=True)
    ref = build_trainer(cfg, tiny_dataset, tmp_path / "ref", progress=False)
    ref.fit()
    assert resumed.step == ref.step == 12
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in ref.ema.module.state_dict().items():
        assert torch.equal(v, resumed.ema.module.state_dict()[k]), k
    assert [r["loss"] for r in _rows(tmp_path / "ref" / "steps.csv")] == [r["loss"] for r in _rows(steps)]
    assert [r["train_loss"] for r in _rows(tmp_path / "ref" / "epochs.csv")] == \
        [r["train_loss"] for r in _rows(run / "epochs.csv")]


def test_real_diffuma_tiny_lowers_its_loss(tmp_path):
    from train_helpers import write_moving_square_dataset

    data = write_moving_square_dataset(tmp_path / "d.zarr", n=4, n_val=2)
    cfg = {"model": {"name": "diffuma", "preset": "tiny"},
           "run": {"epochs": 10, "batch_size": 2, "num_workers": 0, "lr": 3e-3, "warmup_steps": 1,
                   "val_every_epochs": 0}}
    steps = _rows(train_from_config(cfg, data, tmp_path / "run", progress=False) / "steps.csv")
    assert len(steps) == 10

    def mean(rows, key):
        return sum(float(r[key]) for r in rows) / len(rows)

    assert mean(steps[-3:], "loss") < mean(steps[:3], "loss") - 0.05  # eq. 10 total
    assert mean(steps[-3:], "loss_rec") < 0.6 * mean(steps[:3], "loss_rec")  # the fused prediction's L1


def test_tensorboard_scalars_match_the_csv_logs(standin, tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra; CI installs it")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train_from_config(_config(epochs=2), tiny_dataset, tmp_path / "run", progress=False)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/mse", "val/ssim"} <= tags
    csv_loss = [float(r["loss"]) for r in _rows(out / "steps.csv")]
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, len(csv_loss) + 1))
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(csv_loss, rel=1e-6)
    assert [e.value for e in acc.Scalars("val/mse")] == pytest.approx([float(r["val_mse"]) for r in _rows(out / "epochs.csv")], rel=1e-6)


def test_training_dynamics_title_does_not_say_run_run(tmp_path):
    model = {"name": "simvp", "preset": "tiny"}
    title = dynamics_title(model, tmp_path / "demo" / "run", 16, 20)
    assert title == "simvp 'tiny', run demo/run: validation on 16 of 20 val sequences (run.val_max_sequences)"
    assert dynamics_title(model, tmp_path / "runs" / "exp1", 4, 4).startswith("simvp 'tiny', run runs/exp1: ")
    assert dynamics_title({"name": "simvp"}, "run", 4, 4).startswith("simvp 'default', run run: ")


def test_a_stop_signal_is_acknowledged_at_once_naming_what_it_waits_for(standin, tiny_dataset, tmp_path, capsys):
    """The first Ctrl-C only asks the loop to stop at the next step boundary; during validation (which can take
    minutes) that is a while, so the trainer says at once what it is finishing (not under -q)."""
    import signal

    from diffuma.training.trainer import _ValidationAbandoned

    trainer = build_trainer(_config(epochs=1), tiny_dataset, tmp_path / "run", progress=True)
    trainer.step = 6  # steps done, none saved yet: what a second Ctrl-C would throw away is said (a trial lost them)
    trainer._on_stop_signal(signal.SIGINT, None)
    err = capsys.readouterr().err
    assert "stopping: finishing the current step, then saving last.pt (a second Ctrl-C stops at once, " \
           "without saving: the 6 steps since the start would be lost)" in err, err
    assert trainer._stop_signal == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # a second one stops at once
        trainer._on_stop_signal(signal.SIGINT, None)
    during = build_trainer(_config(epochs=1), tiny_dataset, tmp_path / "during", progress=True)
    during._validating = True  # a second signal during a validation abandons it, and saves: nothing is lost
    during._on_stop_signal(signal.SIGINT, None)
    assert "stopping: finishing the validation in progress, then saving last.pt (a second Ctrl-C skips the rest " \
           "of it and saves last.pt now; the resume validates first)" in capsys.readouterr().err
    with pytest.raises(_ValidationAbandoned):
        during._on_stop_signal(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):  # a third (say, while last.pt is being written) stops at once
        during._on_stop_signal(signal.SIGINT, None)
    quiet = build_trainer(_config(epochs=1), tiny_dataset, tmp_path / "quiet", progress=False)
    quiet._on_stop_signal(signal.SIGINT, None)
    assert capsys.readouterr().err == ""


def test_the_last_step_is_logged_even_off_the_logging_interval(standin, tiny_dataset, tmp_path):
    """log_every_steps 5 on a 6-step run logs steps 5 and 6 (a run shorter than the interval logged nothing)."""
    cfg = _config(epochs=4)
    cfg["run"].update(log_every_steps=5, max_steps=6)
    out = train_from_config(cfg, tiny_dataset, tmp_path / "run", progress=False)
    assert [int(r["step"]) for r in _rows(out / "steps.csv")] == [5, 6]
    cfg["run"].update(log_every_steps=10, max_steps=3)
    out = train_from_config(cfg, tiny_dataset, tmp_path / "short", progress=False)
    assert [int(r["step"]) for r in _rows(out / "steps.csv")] == [3]


def test_fit_ends_its_loader_workers(standin, tiny_dataset, tmp_path):
    """The persistent loader workers outlived fit(): chdl bench's next model forked its own while they existed, and
    their late collection printed "can only test a child process" tracebacks (2 of 2 two-model benches)."""
    import multiprocessing

    before = set(multiprocessing.active_children())  # (other tests' daemons may still live in this process)
    trainer = build_trainer(_config(epochs=1, num_workers=2), tiny_dataset, tmp_path / "run", progress=False)
    trainer.fit()
    assert trainer.loader._iterator is None and set(multiprocessing.active_children()) <= before


def test_a_stop_heard_during_the_last_validation_is_reported_to_the_caller(standin, tiny_dataset, tmp_path):
    """Ctrl-C during the final validation: fit printed "stopping: finishing the validation in progress", then
    returned as if nothing had been asked, and chdl bench went on to train every remaining model and exited 0."""
    import signal

    from diffuma.training.trainer import TrainingInterrupted

    trainer = build_trainer(_config(epochs=1), tiny_dataset, tmp_path / "run", progress=False)
    validate = trainer.validate

    def validate_then_ctrl_c(*args, **kwargs):
        result = validate(*args, **kwargs)
        trainer._on_stop_signal(signal.SIGINT, None)
        return result

    trainer.validate = validate_then_ctrl_c
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.finished  # (chdl train then says the training is complete, not "rerun with --resume")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == trainer.step == trainer.total_steps


def _ctrl_c_in_step(trainer, n: int) -> None:
    """Makes ``trainer`` hear a Ctrl-C (its stop-signal handler, called as the signal would call it) as its step
    ``n`` begins."""
    import signal

    step = trainer._train_step

    def ctrl_c_then_step(*args):
        if trainer.step == n - 1:
            trainer._on_stop_signal(signal.SIGINT, None)
        return step(*args)

    trainer._train_step = ctrl_c_then_step


def _same_run(run, ref):
    """``run`` (stopped and resumed) ends as ``ref`` (never stopped): weights, every column of steps.csv and
    epochs.csv but the timings (elapsed_s, samples_per_s), and best.pt's epoch."""
    assert run.step == ref.step
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, run.model.state_dict()[k]), k

    def rows(out, name):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "samples_per_s")} for r in _rows(out / name)]

    assert rows(run.out, "steps.csv") == rows(ref.out, "steps.csv")
    assert rows(run.out, "epochs.csv") == rows(ref.out, "epochs.csv")
    best, ref_best = load_checkpoint(run.ckpt_dir / "best.pt"), load_checkpoint(ref.ckpt_dir / "best.pt")
    assert best["epoch"] == ref_best["epoch"]
    assert best["pending_log"] is ref_best["pending_log"] is None  # (the resume's best.pt carried the stop's)


@pytest.mark.parametrize("during", [True, False])
def test_a_stop_before_or_in_a_validation_saves_it_as_pending_and_the_resume_runs_it(standin, tiny_dataset, tmp_path,
                                                                                      monkeypatch, during):
    """during: Ctrl-C twice in epoch 2's validation (the second used to abort without saving: 3 steps since
    epoch 1's last.pt lost); else Ctrl-C in epoch 2's last step (fit used to validate for minutes before it
    stopped). Either way last.pt holds step 6 with epoch 2's validation pending, and the resume validates it
    first and ends bit for bit as a run never stopped."""
    import signal

    import diffuma.training.trainer as trainer_module
    from diffuma.training.trainer import TrainingInterrupted

    cfg = _config(checkpoint_every_steps=0)  # 3 epochs of 3 steps
    ref = build_trainer(cfg, tiny_dataset, tmp_path / "ref", progress=False)
    ref.fit()
    trainer = build_trainer(cfg, tiny_dataset, tmp_path / "run", progress=False)
    evaluate = trainer_module.evaluate
    if during:

        def ctrl_c_twice_in_epoch_2(*args, **kwargs):
            if trainer.epoch == 2:
                trainer._on_stop_signal(signal.SIGINT, None)
                trainer._on_stop_signal(signal.SIGINT, None)
            return evaluate(*args, **kwargs)

        monkeypatch.setattr(trainer_module, "evaluate", ctrl_c_twice_in_epoch_2)
    else:
        _ctrl_c_in_step(trainer, 6)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.validation_pending and not stop.value.finished and stop.value.step == 6
    saved = load_checkpoint(trainer.ckpt_dir / "last.pt")
    assert saved["step"] == 6 and saved["pending_log"]["epoch"] == 2
    assert [int(r["epoch"]) for r in _rows(trainer.out / "epochs.csv")] == [1]
    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    resumed = build_trainer(None, tiny_dataset, trainer.out, resume=True, progress=False)
    resumed.fit(resume=True)
    assert load_checkpoint(resumed.ckpt_dir / "last.pt")["pending_log"] is None
    _same_run(resumed, ref)


def test_a_stop_before_the_final_validation_is_not_a_finished_run(standin, tiny_dataset, tmp_path):
    """Ctrl-C in the run's very last step: the steps are all done but the final validation (its epochs.csv row,
    best.pt) is not, so the run is not reported complete and its resume does that validation, not "nothing to
    resume"."""
    from diffuma.training.trainer import TrainingInterrupted

    cfg = _config(epochs=2, checkpoint_every_steps=0, max_steps=5)  # stops mid-epoch 2: a partial epoch's row
    ref = build_trainer(cfg, tiny_dataset, tmp_path / "ref", progress=False)
    ref.fit()
    trainer = build_trainer(cfg, tiny_dataset, tmp_path / "run", progress=False)
    _ctrl_c_in_step(trainer, 5)  # the last step
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert stop.value.validation_pending and not stop.value.finished and trainer.finished()
    resumed = build_trainer(None, tiny_dataset, trainer.out, resume=True, progress=False)
    resumed.fit(resume=True)
    assert [int(r["step"]) for r in _rows(resumed.out / "epochs.csv")] == [3, 5]
    _same_run(resumed, ref)


def test_a_second_signal_while_the_stop_writes_last_pt_waits_for_it(standin, tiny_dataset, tmp_path, monkeypatch):
    """A Ctrl-C inside torch.save (the user pressing again while the stop's last.pt was written) cut the write
    short: "cannot write checkpoint (disk full?)", exit 1, and no last.pt. It waits for the write now."""
    import signal

    import diffuma.training.trainer as trainer_module
    from diffuma.training.trainer import TrainingInterrupted

    trainer = build_trainer(_config(checkpoint_every_steps=0), tiny_dataset, tmp_path / "run", progress=False)
    save = trainer_module.save_checkpoint

    def ctrl_c_while_saving(path, state):
        trainer._on_stop_signal(signal.SIGINT, None)  # (raised KeyboardInterrupt into torch.save's writes)
        save(path, state)

    _ctrl_c_in_step(trainer, 1)
    monkeypatch.setattr(trainer_module, "save_checkpoint", ctrl_c_while_saving)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    assert load_checkpoint(trainer.ckpt_dir / "last.pt")["step"] == 1


def test_a_second_signal_just_after_a_validation_waits_for_the_epochs_results(standin, tiny_dataset, tmp_path):
    """A trial's second Ctrl-C landed after the validation had returned, while epochs.csv and the plot were written:
    it aborted, and the epoch (6 steps and its validation) was lost although the first signal had promised a save.
    It now waits for the epoch's results and last.pt."""
    import signal

    from diffuma.training.trainer import TrainingInterrupted

    trainer = build_trainer(_config(checkpoint_every_steps=0), tiny_dataset, tmp_path / "run", progress=False)
    validate = trainer.validate

    def ctrl_c_then_again_as_it_returns():
        if trainer.epoch == 2:
            trainer._on_stop_signal(signal.SIGINT, None)
            result = validate()
            trainer._on_stop_signal(signal.SIGINT, None)  # (_validating is False again here)
            return result
        return validate()

    trainer.validate = ctrl_c_then_again_as_it_returns
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.fit()
    assert not stop.value.validation_pending
    saved = load_checkpoint(trainer.ckpt_dir / "last.pt")
    assert saved["step"] == 6 and saved["epoch"] == 2 and saved["pending_log"] is None
    assert [int(r["epoch"]) for r in _rows(trainer.out / "epochs.csv")] == [1, 2]


def test_a_ctrl_c_inside_a_checkpoint_write_is_an_interrupt_not_a_full_disk(tmp_path, monkeypatch):
    """torch turns an exception raised by the file it writes into a RuntimeError; a KeyboardInterrupt there was
    reported as "cannot write checkpoint (disk full?)". It stays a KeyboardInterrupt, and the checkpoint before
    it stays whole."""
    from diffuma.training import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, {"step": 1, "weights": torch.zeros(1000)})
    before = path.read_bytes()
    init = checkpoint._HashingWriter.__init__

    class CtrlCOnTheSecondWrite:
        def __init__(self, file):
            self.file, self.calls = file, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return self.file.write(data)

        def flush(self):
            self.file.flush()

    monkeypatch.setattr(checkpoint._HashingWriter, "__init__", lambda self, f: init(self, CtrlCOnTheSecondWrite(f)))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, {"step": 2, "weights": torch.ones(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == \
        ["last.pt", "last.pt.checksum.json"]


def test_the_training_bar_is_redrawn_at_its_interval_not_every_step(standin, tiny_dataset, tmp_path, capfd,
                                                                    monkeypatch):
    """The loss/lr postfix redrew the bar at every step (set_postfix refreshes by default): a log file got a \r-joined
    update per step whatever tqdm's interval. With an interval no step reaches, each epoch's bar is drawn twice (opened,
    closed), not once more per step."""
    import tqdm as tqdm_module

    import diffuma.training.trainer as trainer_module

    class Patient(tqdm_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "mininterval": 3600})

    monkeypatch.setattr(trainer_module, "tqdm", Patient)
    trainer = build_trainer(_config(epochs=10, checkpoint_every_steps=0, val_every_epochs=0), tiny_dataset,
                            tmp_path / "run", progress=True)
    trainer.fit()
    err = capfd.readouterr().err
    assert trainer.step == 30 and err.count("\r") <= 10 * 2, err.count("\r")


def test_best_pt_holds_the_epoch_with_the_lowest_validation_mse(standin, tiny_dataset, tmp_path, monkeypatch):
    """best.pt is what eval and bench call "chosen by its validation MSE": the epoch with the lowest one, not the
    latest (validation MSE 0.3, 0.1, 0.2 over three epochs: epoch 2's weights)."""
    from diffuma.training.trainer import Trainer

    scores = iter([0.3, 0.1, 0.2])
    monkeypatch.setattr(Trainer, "validate", lambda self: {"mse": next(scores), "mae": 0.1, "ssim": 0.5, "psnr": 20.0})
    out = train_from_config(_config(epochs=3), tiny_dataset, tmp_path / "run", progress=False)
    best, last = (load_checkpoint(out / "checkpoints" / name) for name in ("best.pt", "last.pt"))
    assert best["best_val_mse"] == 0.1 and best["epoch"] == 2 and last["epoch"] == 3
    epochs = _rows(out / "epochs.csv")
    assert int(min(epochs, key=lambda r: float(r["val_mse"]))["step"]) == best["step"] < last["step"]
