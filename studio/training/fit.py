"""The one training loop every trainer runs: AdamW on a trainer's loss, resumable and time-limited.

A trainer builds its networks and its data and hands :func:`fit` a :class:`Trainee`: the parameters
to optimise, a loss closure drawing its batch from the run's two random generators, the modules its
checkpoints hold, its weight averages, and optionally a sample grid. :func:`fit` does the rest,
the same way for every trainer:

* the learning rate (:func:`lr_schedule.lr_at`: linear warm-up, then cosine or constant), and with
  a time limit a cosine schedule kept fitted to the steps the limit allows
  (:class:`lr_schedule.TimeFittedTotal`);
* each step: the loss, ``zero_grad`` / ``backward`` / gradient-norm clip / ``step``, then the EMA
  updates (Polyak averaging with the usual warm-up, :class:`ckpt.EMA`);
* ``loss.csv``: every ``log_every`` steps the mean loss (and the loss's other values) over those
  steps, the learning rate, the seconds spent in steps and the mean seconds per step of the last 50;
* checkpoints every ``checkpoint_every`` steps and at the end (:func:`ckpt.write_checkpoint`: the
  modules, the optimizer, both generators, ``state.json`` with the recipe), the sample grid at
  the checkpoints ``grid_every`` allows and at the end;
* resume from the newest checkpoint: weights, optimizer and generators restored, so the run goes
  on exactly as if it had not stopped; a schedule fitted to a time limit is kept
  (:func:`ckpt.resumed_steps`), and the log loses the rows after the checkpoint.

All times are readings of ``clock`` (seconds), so a test can run the loop on a clock of its own.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from . import ckpt as C
from .lr_schedule import TimeFittedTotal, lr_at, set_lr
from .settings import TrainConfig

ProgressFn = Callable[[int, int, float, float], None]  # (step, total, loss, eta_seconds)
Clock = Callable[[], float]
WINDOW = 50  # steps over which s/it, and the summary's recent means, are measured


@dataclass
class Trainee:
    """What a trainer gives :func:`fit`: its networks, its loss and its data.

    ``loss(rng, gen)`` draws a batch with the run's numpy and torch generators and returns the loss
    tensor, or ``(loss, {name: value})`` with further values to log (``log_fields`` names them).
    ``saved``: name → module (or :class:`ckpt.EMA`) whose state each checkpoint keeps as
    ``name.safetensors``; ``averages``: the (EMA, module) pairs updated after every step.
    ``state``: the recipe ``state.json`` records (it must not change between invocations).
    ``grid(step)`` draws the sample grid into a PNG and returns its path (copied into the
    checkpoint as ``samples.png``); ``grid_every`` None: at every checkpoint.
    ``check_resume(state)`` refuses a checkpoint the run cannot continue (one-line ``ValueError``).
    ``limit_from``: the clock reading the time limit counts from (None: the first step), so a
    limit can include the trainer's set-up; ``reserve``: the share of the limit kept free for the
    work after the last step (a final grid, the export).
    """

    params: list
    loss: Callable[[np.random.Generator, torch.Generator], Any]
    saved: dict
    averages: list = field(default_factory=list)
    state: dict = field(default_factory=dict)
    log_fields: tuple = ()
    grid: Optional[Callable[[int], Path]] = None
    grid_every: Optional[int] = None
    check_resume: Optional[Callable[[dict], None]] = None
    limit_from: Optional[float] = None
    reserve: float = 0.0


class _Window:
    """The last :data:`WINDOW` steps' losses, logged values and durations."""

    def __init__(self, fields: tuple):
        self.fields = ("loss", *fields)
        self.rows: list[tuple] = []  # (loss, *values, seconds)

    def add(self, values: tuple, seconds: float) -> None:
        self.rows = (self.rows + [(*values, seconds)])[-WINDOW:]

    def mean(self, i: int, last: int = WINDOW) -> float:
        rows = self.rows[-last:]
        return sum(r[i] for r in rows) / len(rows)

    def s_per_it(self) -> float:
        return self.mean(-1)


def fit(out_dir, trainee: Trainee, cfg: TrainConfig, progress: Optional[ProgressFn] = None,
        clock: Clock = time.monotonic) -> dict:
    """Train ``trainee`` under ``out_dir`` by the loop settings of ``cfg`` (resuming from its newest
    checkpoint if ``cfg.resume``); returns the loop's summary (steps, times, recent losses, the
    final checkpoint)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(trainee.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    steps = cfg.steps
    start_step, train_seconds = 0, 0.0
    ck = C.latest_checkpoint(out_dir) if cfg.resume else None
    if ck is not None:
        st = C.restore_checkpoint(ck, trainee.saved, opt, rng, gen)
        if trainee.check_resume is not None:
            trainee.check_resume(st)
        start_step, train_seconds = int(st["step"]), float(st.get("train_seconds", 0.0))
        steps = C.resumed_steps(st, steps)  # keep the schedule the first invocation fitted
    fitted_from = cfg.steps if steps < cfg.steps else None  # a time limit may shorten the schedule
    log = C.LossLog(out_dir / "loss.csv", ["step", "loss", *trainee.log_fields, "lr", "train_seconds", "s_per_it"],
                    start_step if ck is not None else None)

    def save(step: int, final: bool = False) -> Path:
        png, grid_s = None, 0.0
        if trainee.grid is not None and (final or not trainee.grid_every or step % trainee.grid_every == 0):
            t0 = clock()
            png = trainee.grid(step)
            grid_s = clock() - t0
        path = C.write_checkpoint(
            out_dir, step, {f"{name}.safetensors": m.state_dict() for name, m in trainee.saved.items()}, opt,
            {"numpy_rng": C.numpy_rng_state(rng), "train_seconds": train_seconds, "grid_seconds": grid_s,
             **trainee.state, "fitted_from": fitted_from, "fitted_total": steps if fitted_from else None},
            keep=cfg.keep_checkpoints)
        save_file({"torch_generator": gen.get_state()}, str(path / "rng.safetensors"))
        if png is not None:
            shutil.copyfile(png, path / "samples.png")
        return path

    step = start_step
    t_start = clock()
    limit = cfg.time_limit_s
    if limit is not None and trainee.limit_from is not None:
        limit -= t_start - trainee.limit_from  # the set-up has spent part of it
    fitting = (TimeFittedTotal(steps, limit, t_start, start_step, reserve_s=trainee.reserve * limit)
               if limit is not None and cfg.lr_schedule == "cosine" else None)
    window = _Window(trainee.log_fields)
    last_loss, stopped_early = float("nan"), False
    while step < steps:
        if limit is not None and clock() - t_start > limit:
            stopped_early = True
            break
        t0 = clock()
        lr = lr_at(cfg.lr_schedule, step, steps, cfg.lr, cfg.warmup_steps)
        set_lr(opt, lr)
        out = trainee.loss(rng, gen)
        loss, extra = out if isinstance(out, tuple) else (out, {})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainee.params, cfg.grad_clip)
        opt.step()
        step += 1
        for ema, module in trainee.averages:
            ema.update(module, step)
        dt = clock() - t0
        train_seconds += dt
        last_loss = loss.item()
        window.add((last_loss, *(extra[f] for f in trainee.log_fields)), dt)
        if step % cfg.log_every == 0 or step == steps:
            means = {f: f"{window.mean(i, cfg.log_every):.6f}" for i, f in enumerate(window.fields)}
            log.write(step=step, **means, lr=f"{lr:.3g}", train_seconds=f"{train_seconds:.1f}",
                      s_per_it=f"{window.s_per_it():.4f}")
        if progress is not None:
            progress(step, steps, window.mean(0, cfg.log_every), window.s_per_it() * (steps - step))
        if fitting is not None:
            steps = fitting.update(step, clock())
            fitted_from = cfg.steps if steps < cfg.steps else None
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < steps:
            save(step)
    log.close()
    final = save(step, final=True) if (step > start_step or ck is None) else ck
    recent = {f"recent_{f}_mean": window.mean(i) if window.rows else None
              for i, f in enumerate(window.fields)}
    return {"step": step, "target_steps": steps, "stopped_early": stopped_early,
            "steps_reduced_to_fit_time_limit_from": fitted_from,
            "train_seconds_total": round(train_seconds, 1), "s_per_it_mean": round(train_seconds / max(1, step), 4),
            "last_loss": last_loss, **recent, "checkpoint": str(final)}
