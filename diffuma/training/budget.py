"""A wall-clock training budget (``run.max_minutes``, what ``chdl bench --budget-minutes`` gives every model):
how the schedule length is planned when the run is bounded by time instead of epochs.

Training time is the summed wall-clock of the optimiser steps, each counted from the moment the loop asks
the loader for its batch to the end of its update (data wait, host-to-device copy, forward, backward,
optimiser step, EMA update). Validation, checkpoint writes and logging are not counted, nor is a pause: a step
during which the process was stopped and continued (SIGSTOP or Ctrl-Z, then SIGCONT) counts as the median of
the recent steps, and the trainer says so (a 20 s pause in a 30 s budget had cut the run to 5 of its 31 steps,
the lr still at its peak). A machine that stalls without stopping the process (a suspended VM) is still
charged. The trainer keeps the running total (``Trainer.train_seconds``) in every checkpoint.

The lr schedule (cosine and onecycle anneal towards ``total_steps``) and PredRNN-v2's scheduled sampling
(``step / total_steps``) need the run's length in steps up front, so a budget run plans it once, after its
first ``CALIBRATION_STEPS`` steps: the first step is a warm-up (memory allocation, kernel autotuning, loader
workers starting) and is left out of the estimate, the mean of the others is the step time, and

    total_steps = steps done + floor(budget left / step time), capped by run.epochs and run.max_steps.

Until then the schedule runs as planned for that cap (in a bench budget run the cap is never reached, so
those first steps are the warm-up or the peak lr). The first steps are a small and early sample (allocator,
caches and the loader still settling): on Moving MNIST one model's first steps were 16 % slower than its
later ones, so it finished its planned schedule with a sixth of its budget unused. So the plan is made once
more, once, with the same formula: when at least ``CALIBRATION_STEPS`` more steps have been timed and
``REPLAN_FRACTION`` of the budget is spent, from the mean time of the steps since the first plan. The cosine
is then still near its peak (at 10 % of its length it is at 98 % of the peak lr), so moving its end changes
the lr by a few percent at that step and bends the rest of the curve to the new length. The run stops at
whichever comes first: ``total_steps`` (the schedule has completed), the budget spent (the steps got slower
than the estimate; the schedule is cut short), or the cap. ``stop_reason`` says which.

Resuming: the checkpoint keeps the training time used, the samples seen and the planned ``total_steps``, so a
resumed run continues the same schedule with the budget that is left (a checkpoint from before the plan
plans again from the resumed process's first steps; a resumed process re-plans once more from its own
steps). Where a budget run stops depends on the machine's speed, so unlike an epoch-bounded run it is not reproducible step for step, resumed or not.
"""

from __future__ import annotations

import math

CALIBRATION_STEPS = 5  # steps timed before the schedule length is planned (the first is a warm-up)
REPLAN_FRACTION = 0.1  # share of the budget spent before the plan is made once more from the later steps


def step_time_estimate(step_seconds: list[float]) -> float:
    """Seconds per optimiser step from the calibration steps' times: the mean without the first (a warm-up),
    or the first alone when there is no other."""
    if not step_seconds:
        raise ValueError("no step has been timed yet")
    timed = step_seconds[1:] or step_seconds
    return sum(timed) / len(timed)


def planned_total_steps(steps_done: int, used_s: float, budget_s: float, step_s: float, cap: int) -> int:
    """The schedule length of a budget run: the ``steps_done`` so far plus as many steps of ``step_s`` seconds
    as the budget left (``budget_s - used_s``, seconds) allows, at most ``cap`` and at least ``steps_done``."""
    more = math.floor(max(budget_s - used_s, 0.0) / step_s) if step_s > 0 else cap
    return max(steps_done, min(cap, steps_done + more))


def stop_reason(step: int, train_seconds: float, budget_s: float | None, planned_steps: int | None) -> str:
    """Why a finished run stopped: "schedule" (it did all ``planned_steps`` of its budget plan), "budget" (its
    training time reached ``budget_s`` first) or "epochs" (run.epochs or run.max_steps came first)."""
    if planned_steps is not None and step >= planned_steps:
        return "schedule"
    if budget_s is not None and train_seconds >= budget_s:
        return "budget"
    return "epochs"
