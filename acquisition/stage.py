"""Stages: what moves the camera's field of view along a dicing lane.

A real machine's stage implements :class:`acquisition.backends.base.Stage` (``move_to`` + ``wait_settled``)
in its own driver module; capture needs nothing else from it. :class:`SimulatedStage` is the stand-in used
with the simulator, with replay, with the viky test cameras and in tests: it "moves" at a finite speed
and settles after a fixed time, in real time, so the capture loop's timing behaves as on a machine.
"""

from __future__ import annotations

import time

from acquisition.backends.base import Stage, sleep_until


class SimulatedStage(Stage):
    """A stage that reaches its target after ``settle_s`` (+ travel at ``speed_um_s``, if given)."""

    def __init__(self, settle_s: float = 0.0, speed_um_s: float | None = None):
        self.settle_s = settle_s  # time from arrival until vibration has died down, seconds
        self.speed_um_s = speed_um_s  # travel speed along the lane; None: moves are instantaneous
        self.lane = 0
        self.position_um = 0.0
        self.moves = 0  # number of move_to calls (for tests and diagnostics)
        self._settled_at = time.monotonic()

    def move_to(self, lane: int, position_um: float) -> None:
        travel = 0.0
        if self.speed_um_s and lane == self.lane:
            travel = abs(position_um - self.position_um) / self.speed_um_s
        self.lane, self.position_um = int(lane), float(position_um)
        self._settled_at = time.monotonic() + travel + self.settle_s
        self.moves += 1

    def wait_settled(self, timeout_s: float) -> None:
        sleep_until(self._settled_at, timeout_s, f"simulated stage: not settled within {timeout_s:.3f} s")
