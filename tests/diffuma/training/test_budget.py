"""The wall-clock training budget (run.max_minutes, diffuma.training.budget): the schedule planned from the first
steps' times, the stop when the training time passes the budget, resume. Timing comes from a clock injected
into the Trainer that advances a fixed amount per optimiser step, so nothing here depends on the machine."""

import csv

import pytest
import torch

from diffuma.training import ConfigError, resolve_config
from diffuma.training.budget import CALIBRATION_STEPS, planned_total_steps, step_time_estimate, stop_reason
from diffuma.training.checkpoint import load_checkpoint
from diffuma.training.trainer import build_trainer

LR = 3e-3


def _config(**run):
    """8 train sequences in batches of 3 (3, 3, 2): 3 steps per epoch; 100 epochs = a cap the budget hits first."""
    base = {"epochs": 100, "batch_size": 3, "num_workers": 0, "lr": LR, "val_every_epochs": 0, "max_minutes": 1.0}
    return {"model": {"name": "standin", "preset": "tiny"}, "run": {**base, **run}}


def _seconds_per_step(trainer, first=2.0, later=None):
    """A clock (s) for ``trainer``: each of the first CALIBRATION_STEPS steps takes ``first`` seconds, each
    later step ``later`` (default ``first``)."""
    later = first if later is None else later
    k = CALIBRATION_STEPS
    return lambda: first * trainer.step if trainer.step <= k else first * k + later * (trainer.step - k)


def _lrs(run_dir):
    with open(run_dir / "steps.csv", newline="") as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


def test_step_time_leaves_out_the_warm_up_step_and_the_plan_fits_the_budget_left():
    assert step_time_estimate([20.0, 2.0, 2.0, 2.0, 2.0]) == 2.0
    assert step_time_estimate([3.0]) == 3.0
    # 5 steps done in 28 s of a 60 s budget at 2 s per step: 16 more
    assert planned_total_steps(5, 28.0, 60.0, 2.0, cap=300) == 21
    assert planned_total_steps(5, 10.0, 60.0, 2.0, cap=12) == 12  # run.epochs / run.max_steps cap it
    assert planned_total_steps(5, 70.0, 60.0, 2.0, cap=300) == 5  # already spent: no more steps
    assert stop_reason(30, 60.0, 60.0, 30) == "schedule"
    assert stop_reason(22, 61.0, 60.0, 30) == "budget"
    assert stop_reason(9, 1.0, None, None) == "epochs"


def test_max_minutes_is_checked_like_the_other_run_fields(standin):
    assert resolve_config(_config(max_minutes=2))["run"]["max_minutes"] == 2.0
    with pytest.raises(ConfigError, match=r"run\.max_minutes: must be > 0, got 0"):
        resolve_config(_config(max_minutes=0))


def test_budget_plans_the_schedule_from_the_first_steps_and_completes_it(standin, tiny_dataset, tmp_path):
    t = build_trainer(_config(), tiny_dataset, tmp_path / "run", progress=False)
    t.clock = _seconds_per_step(t, 2.0)
    t.fit()
    # 5 calibration steps (10 s), then floor((60 - 10) s / 2 s) = 25 more: the schedule ends at step 30, at 60 s.
    assert t.planned_steps == t.total_steps == t.step == 30
    assert t.train_seconds == 60.0 and t.samples_seen == 10 * 8  # 10 epochs of 8 sequences
    lrs = _lrs(tmp_path / "run")
    assert len(lrs) == 30 and lrs[-1] < 0.01 * LR  # the cosine reached its end (a 300-step plan: ~0.98 LR)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["step"], state["planned_total_steps"], state["train_seconds"], state["samples_seen"]) == (
        30, 30, 60.0, 80)
    # it ended on its schedule, which spent the budget exactly: a resume says the schedule ended it (it said
    # "its 1-minute training budget spent" where the record says stopped_by schedule)
    assert t.budget_spent() and t._end_reason() == "all 30 planned steps done"


def test_a_run_slower_than_its_first_steps_is_re_planned_and_completes_its_schedule(standin, tiny_dataset, tmp_path):
    t = build_trainer(_config(), tiny_dataset, tmp_path / "run", progress=False)
    t.clock = _seconds_per_step(t, 2.0, later=3.0)  # slower after the plan: the 30 planned steps would not fit
    t.fit()
    # plan at step 5 (10 s): 30 steps. Re-plan once 5 more steps are timed and 10 % of the budget is spent: step 10,
    # 25 s, 3 s per step since the plan -> 10 + floor(35 / 3) = 21 steps, done at 58 s, within the budget.
    assert t.planned_steps == t.total_steps == t.step == 21 and t.train_seconds == 58.0
    assert not t.budget_spent() and stop_reason(t.step, t.train_seconds, 60.0, t.planned_steps) == "schedule"
    lrs = _lrs(tmp_path / "run")
    assert len(lrs) == 21 and lrs[-1] < 0.01 * LR  # the cosine reached the end of the re-planned schedule


def test_budget_stops_training_when_the_clock_passes_it(standin, tiny_dataset, tmp_path):
    t = build_trainer(_config(), tiny_dataset, tmp_path / "run", progress=False)
    # 2 s per step until the plan, 3 s until the re-plan (step 10, 25 s: 21 steps planned), then 4 s: the budget
    # (60 s) is passed at step 19 (61 s), the first step of epoch 7 (3 steps per epoch): the stop does not wait
    # for the epoch's end or the schedule's.
    t.clock = lambda: (2.0 * t.step if t.step <= 5 else 10.0 + 3.0 * (t.step - 5) if t.step <= 10
                       else 25.0 + 4.0 * (t.step - 10))
    t.fit()
    assert t.planned_steps == 21 and t.step == 19 and t.train_seconds == 61.0
    assert t.budget_spent() and t._end_reason() == "its 1-minute training budget spent"
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 19 and stop_reason(state["step"], state["train_seconds"], 60.0, 21) == "budget"
    # resuming a spent budget trains nothing
    again = build_trainer(None, tiny_dataset, tmp_path / "run", resume=True, progress=False)
    again.clock = _seconds_per_step(again, 2.0)
    again.fit(resume=True)
    assert again.step == 19


def test_a_killed_budget_run_resumes_the_same_schedule_with_the_budget_left(standin, tiny_dataset, tmp_path):
    cfg = _config(checkpoint_every_steps=1)
    ref = build_trainer(cfg, tiny_dataset, tmp_path / "ref", progress=False)
    ref.clock = _seconds_per_step(ref, 2.0)
    ref.fit()
    killed = build_trainer(cfg, tiny_dataset, tmp_path / "run", progress=False)
    killed.clock = _seconds_per_step(killed, 2.0)
    killed.fit(stop_after_steps=12)  # after the plan (step 5); last.pt is step 12's
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert (state["step"], state["planned_total_steps"], state["train_seconds"]) == (12, 30, 24.0)
    resumed = build_trainer(None, tiny_dataset, tmp_path / "run", resume=True, progress=False)
    resumed.clock = _seconds_per_step(resumed, 2.0)
    resumed.fit(resume=True)
    assert (resumed.step, resumed.train_seconds, resumed.samples_seen) == (30, 60.0, 80)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert _lrs(tmp_path / "run") == _lrs(tmp_path / "ref")


def _paused_in_step(trainer, step: int, pause_s: float = 20.0):
    """A clock (s) for ``trainer``: 2 s a step, and step ``step`` takes ``pause_s`` more, the process stopped and
    continued (a real SIGCONT to this process) as it ends."""
    import os
    import signal

    paused = []

    def clock():
        if trainer.step == step and not paused:
            paused.append(True)
            os.kill(os.getpid(), signal.SIGCONT)
        return 2.0 * trainer.step + (pause_s if trainer.step >= step else 0.0)

    return clock


def test_a_paused_process_does_not_use_up_its_budget(standin, tiny_dataset, tmp_path, capfd):
    """SIGSTOP (or Ctrl-Z) for 20 s during a 30 s budget run: the pause was charged as training time in full, the
    plan was made from it, and the run stopped after 5 steps of its 31 with the lr still at its peak, exit 0,
    without a word. Now the step the SIGCONT fell in counts as the median step, and it is said."""
    import signal

    t = build_trainer(_config(), tiny_dataset, tmp_path / "run", progress=False)
    t.clock = _paused_in_step(t, 3)
    t.fit()
    assert t.planned_steps == t.total_steps == t.step == 30 and t.train_seconds == 60.0  # as if never paused
    assert "step 3: the process was stopped and continued during it" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGCONT) == signal.SIG_DFL  # the handler is the trainer's only during fit


def test_a_pause_in_the_first_step_is_not_charged_either(standin, tiny_dataset, tmp_path, capfd):
    """A run (or a resumed process) paused in its first step had no step to compare with, and was charged in full:
    a 20 s pause ended a 30 s run at 10 steps, without a word. That step now counts nothing and is no sample."""
    t = build_trainer(_config(), tiny_dataset, tmp_path / "run", progress=False)
    t.clock = _paused_in_step(t, 1)
    t.fit()
    # step 1 counts 0 s and is not a calibration sample: steps 2-6 calibrate (10 s), then (60 - 10) / 2 = 25 more
    assert t.planned_steps == t.step == 31 and t.train_seconds == 60.0
    assert "step 1: the process was stopped and continued during it" in capfd.readouterr().err


def test_the_sigcont_a_stop_signal_brings_is_no_pause(standin, tiny_dataset, tmp_path, capfd):
    """GNU timeout (and batch schedulers) send SIGCONT right after their SIGINT/SIGTERM, in case the process was
    stopped: `timeout -s INT 25 chdl train` said "the process was stopped and continued during it" when nothing had
    been. With a stop signal in, the SIGCONT is not announced; the run stops at that step as any interrupted one."""
    import os
    import signal

    from diffuma.training import TrainingInterrupted

    t = build_trainer(_config(), tiny_dataset, tmp_path / "run", progress=False)
    sent = []

    def clock():
        if t.step == 3 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # as timeout -s INT does: the signal, then SIGCONT
            os.kill(os.getpid(), signal.SIGCONT)
        return 2.0 * t.step + (20.0 if t.step >= 3 else 0.0)

    t.clock = clock
    with pytest.raises(TrainingInterrupted):
        t.fit()
    assert t.step == 3 and "stopped and continued" not in capfd.readouterr().err
