"""The learning rate at each step, and the step count a wall-clock limit allows.

Every trainer warms the rate up linearly, then either keeps it (``constant``) or decays it along
a half-cosine to 5 % of its peak (``cosine``; Loshchilov & Hutter 2017, SGDR without restarts).
A decaying schedule cut off by a time limit ends mid-decay, at a high rate; :class:`TimeFittedTotal`
keeps the schedule's length fitted to the steps the limit allows instead.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "constant")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def cosine_lr(step: int, total: int, base: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then half-cosine decay from ``base`` to
    ``floor * base`` at ``total`` (Loshchilov & Hutter 2017, SGDR without restarts)."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def constant_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then ``base``."""
    return base * min(1.0, (step + 1) / max(1, warmup))


def lr_at(schedule: str, step: int, total: int, base: float, warmup: int) -> float:
    """The learning rate of 0-based ``step`` of ``total`` under ``schedule`` (one of :data:`SCHEDULES`)."""
    return (cosine_lr if schedule == "cosine" else constant_lr)(step, total, base, warmup)


def fit_steps_to_time(step: int, steps: int, s_per_it: float, seconds_left: float,
                      margin: float = 0.95) -> int:
    """The total step count that ends a schedule inside ``seconds_left`` at the measured
    speed (never more than ``steps``)."""
    return min(steps, step + max(1, int(seconds_left / s_per_it * margin)))


class TimeFittedTotal:
    """Keeps a decaying schedule's total step count fitted to a wall-clock limit, so that the
    learning rate reaches its floor when the time runs out rather than being cut off mid-decay.

    The first fit comes ``first`` steps into the run; after that the total is refitted every
    ``every`` steps from the wall time per step over the last ``window`` steps (checkpoints and
    grids included), because the speed of a shared CPU drifts through a run.  Each refit moves
    the total by little, so the schedule stays smooth.  The total never exceeds ``requested``.
    The schedule is aimed to end ``slack`` of the limit early (the speed is noisy) and a further
    ``reserve_s`` seconds early, for work after the last step (a final grid, the export).
    Times are readings of one clock (seconds), ``t_start`` the one the limit counts from.
    """

    def __init__(self, requested: int, limit_s: float, t_start: float, start_step: int,
                 first: int = 60, every: int = 100, window: int = 500, slack: float = 0.03,
                 reserve_s: float = 0.0):
        self.requested, self.total = requested, requested
        self.end_s, self.t_start = limit_s * (1 - slack) - reserve_s, t_start
        self.warm = start_step + min(20, first // 3)  # the first steps are slower: measure after them
        self.first, self.every, self.window = start_step + first, every, window
        self.marks: list[tuple[int, float]] = []  # (step, clock reading when it finished)

    def update(self, step: int, now: float) -> int:
        """Note that ``step`` finished at ``now``; returns the (re)fitted total."""
        if step == self.warm:
            self.marks.append((step, now))
        if not self.marks or step < self.first or (step - self.first) % self.every or step >= self.total:
            return self.total
        s0, t0 = next((m for m in reversed(self.marks) if step - m[0] >= self.window), self.marks[0])
        self.marks.append((step, now))
        left = self.end_s - (now - self.t_start)
        self.total = fit_steps_to_time(step, self.requested, (now - t0) / (step - s0), left, margin=1.0)
        return self.total
