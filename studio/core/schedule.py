"""Noise schedules and inference timestep plans (docs/maths.md, "Notation and schedules").

Beta schedules follow Ho et al. 2020 (linear), Rombach et al. 2022
(scaled_linear) and Nichol & Dhariwal 2021 (squaredcos_cap_v2). Timestep
spacings follow Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
Steps are Flawed", Table 2, with the same formulas as diffusers so that plans
agree with diffusers' schedulers step for step.
"""
from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass, field

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")


class ScheduleError(ValueError):
    """A schedule or plan setting that cannot be used."""


def _cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008."""
    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


MAX_TRAIN_TIMESTEPS = 100_000


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_scheduler_config(c: dict) -> None:
    """Check the values of a diffusers ``scheduler_config.json`` (or a recipe's schedule overrides) that
    the studio reads; raise ``ScheduleError`` naming the first bad key, its value and what is allowed.

    Catches what would otherwise fail mid-run or silently: β outside (0, 1) (ᾱ_t would be ≤ 0 or
    NaN), β_start > β_end (a schedule that removes noise as t grows), absurd numbers of training
    timesteps (a billion-entry β table), and settings of the wrong type."""
    from .prediction import PREDICTION_TYPES

    def bad(key, allowed):
        raise ScheduleError(f"{key} must be {allowed}, got {c[key]!r}")

    n = c.get("num_train_timesteps", 1000)
    if "num_train_timesteps" in c and (not isinstance(n, int) or isinstance(n, bool)
                                       or not 2 <= n <= MAX_TRAIN_TIMESTEPS):
        bad("num_train_timesteps", f"an integer from 2 to {MAX_TRAIN_TIMESTEPS:,}")
    tb = c.get("trained_betas")
    if tb is not None:
        if not isinstance(tb, (list, tuple)) or not 2 <= len(tb) <= MAX_TRAIN_TIMESTEPS:
            raise ScheduleError(f"trained_betas must be a list of 2 to {MAX_TRAIN_TIMESTEPS:,} numbers")
        for i, b in enumerate(tb):
            if not _number(b) or not 0 < b < 1:
                raise ScheduleError(f"trained_betas[{i}] must be a number strictly between 0 and 1, got {b!r}")
    else:
        schedule = c.get("beta_schedule", "linear")
        if schedule not in BETA_SCHEDULES:
            bad("beta_schedule", f"one of {', '.join(BETA_SCHEDULES)} (or give trained_betas)")
        if schedule in ("linear", "scaled_linear"):
            for key in ("beta_start", "beta_end"):
                if key in c and (not _number(c[key]) or not 0 < c[key] < 1):
                    bad(key, "a number strictly between 0 and 1")
            start, end = c.get("beta_start", 0.0001), c.get("beta_end", 0.02)
            if start > end:
                raise ScheduleError(f"beta_start ({start!r}) must not exceed beta_end ({end!r})")
    if "steps_offset" in c and c["steps_offset"] is not None:
        v = c["steps_offset"]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < (n if isinstance(n, int) else 1000):
            bad("steps_offset", "an integer from 0 to num_train_timesteps − 1")
    for key in ("set_alpha_to_one", "use_karras_sigmas", "clip_sample", "thresholding", "rescale_betas_zero_snr"):
        if key in c and c[key] is not None and not isinstance(c[key], bool):
            bad(key, "true or false")
    if c.get("timestep_spacing") is not None and c["timestep_spacing"] not in SPACINGS:
        bad("timestep_spacing", f"one of {', '.join(SPACINGS)}")
    if "prediction_type" in c and c["prediction_type"] not in PREDICTION_TYPES:
        bad("prediction_type", f"one of {', '.join(PREDICTION_TYPES)}")
    for key in ("clip_sample_range", "dynamic_thresholding_ratio", "sample_max_value"):
        if key in c and c[key] is not None and (not _number(c[key]) or c[key] <= 0):
            bad(key, "a positive number")


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete DDPM schedule: β_t, α_t = 1 − β_t, ᾱ_t = ∏ α_i, σ_t = √((1−ᾱ_t)/ᾱ_t).

    ``alphas_cumprod`` is kept in float32, computed exactly as diffusers does,
    so that plans and steps agree with diffusers to float32 rounding.
    """

    betas: torch.Tensor
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    final_alpha_cumprod: float = 1.0
    steps_offset: int = 0
    zero_terminal_snr: bool = False  # β_T = 1, ᾱ_T = 0 (Lin et al. 2024, Alg. 1: rescale_betas_zero_snr)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = self.betas.to(torch.float32)
        if betas.ndim != 1 or len(betas) < 2:
            raise ScheduleError("betas must be a 1-D list of at least 2 values")
        inner = betas[:-1] if self.zero_terminal_snr else betas
        if (not torch.isfinite(betas).all() or (betas <= 0).any() or (inner >= 1).any()
                or (self.zero_terminal_snr and betas[-1] > 1)):
            raise ScheduleError("every beta must be finite and strictly between 0 and 1")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))

    # -- construction -------------------------------------------------------
    @classmethod
    def create(
        cls,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas: list[float] | None = None,
        final_alpha_cumprod: float = 1.0,
        steps_offset: int = 0,
    ) -> "NoiseSchedule":
        if trained_betas is not None:
            betas = torch.tensor(list(trained_betas), dtype=torch.float32)
            beta_schedule = "explicit"
        elif num_train_timesteps < 2:
            raise ScheduleError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            betas = _cosine_betas(num_train_timesteps)
        else:
            raise ScheduleError(
                f"unknown beta schedule {beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)} or give explicit betas"
            )
        return cls(betas, beta_schedule, beta_start, beta_end, final_alpha_cumprod, steps_offset)

    @classmethod
    def from_config(cls, config: dict, **overrides) -> "NoiseSchedule":
        """Build from a diffusers ``scheduler_config.json`` dict; ``overrides`` win."""
        c = {**config, **{k: v for k, v in overrides.items() if v is not None}}
        check_scheduler_config(c)
        set_one = c.get("set_alpha_to_one", True)
        sched = cls.create(
            beta_schedule=c.get("beta_schedule", "linear"),
            num_train_timesteps=int(c.get("num_train_timesteps", 1000)),
            beta_start=float(c.get("beta_start", 0.0001)),
            beta_end=float(c.get("beta_end", 0.02)),
            trained_betas=c.get("trained_betas"),
            steps_offset=int(c.get("steps_offset", 0) or 0),
        )
        if c.get("rescale_betas_zero_snr"):
            from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

            sched = cls(rescale_zero_terminal_snr(sched.betas.clone()), sched.beta_schedule, sched.beta_start,
                        sched.beta_end, sched.final_alpha_cumprod, sched.steps_offset, zero_terminal_snr=True)
        if not set_one:
            object.__setattr__(sched, "final_alpha_cumprod", float(sched.alphas_cumprod[0]))
        return sched

    def finite_terminal(self) -> "NoiseSchedule":
        """For samplers in σ (Euler, Heun, DPM-Solver): ᾱ_T = 2⁻²⁴ instead of 0, so σ_max is finite
        (≈ 4096), exactly as diffusers' Euler and DPM-Solver schedulers do under rescale_betas_zero_snr."""
        if not self.zero_terminal_snr:
            return self
        ac = self.alphas_cumprod.clone()
        ac[-1] = 2.0 ** -24
        out = dataclasses.replace(self)
        object.__setattr__(out, "alphas_cumprod", ac)
        return out

    def to_config(self) -> dict:
        d = {
            "beta_schedule": self.beta_schedule,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "steps_offset": self.steps_offset,
            "set_alpha_to_one": self.final_alpha_cumprod == 1.0,
        }
        if self.zero_terminal_snr:
            d["rescale_betas_zero_snr"] = True
        if self.beta_schedule == "explicit":
            d["trained_betas"] = [float(b) for b in self.betas]
        return d

    # -- derived quantities -------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    @property
    def sigmas(self) -> np.ndarray:
        """k-diffusion σ_t = √((1−ᾱ_t)/ᾱ_t) for every training timestep (float32, as diffusers)."""
        ac = self.alphas_cumprod
        return (((1 - ac) / ac) ** 0.5).numpy()

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t for an integer timestep; t < 0 means 'after the last step' (final ᾱ)."""
        return self.final_alpha_cumprod if t < 0 else float(self.alphas_cumprod[t])

    def sigma_at(self, t: float | np.ndarray) -> np.ndarray:
        """σ at a (possibly fractional) timestep, linear in t as diffusers' Euler scheduler."""
        s = self.sigmas
        return np.interp(t, np.arange(len(s)), s)

    def log_snr(self) -> np.ndarray:
        ac = np.maximum(self.alphas_cumprod.double().numpy(), 2.0 ** -24)  # finite at a zero-SNR ᾱ_T = 0
        return np.log(ac) - np.log1p(-ac)


# -- timestep spacings --------------------------------------------------------
def _check_steps(sched: NoiseSchedule, steps: int, spacing: str) -> None:
    if spacing not in SPACINGS:
        raise ScheduleError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps!r}")
    if steps > sched.num_train_timesteps:
        raise ScheduleError(
            f"steps ({steps}) cannot exceed the model's {sched.num_train_timesteps} training timesteps"
        )


def integer_timesteps(sched: NoiseSchedule, steps: int, spacing: str = "leading") -> np.ndarray:
    """Descending integer timesteps as diffusers' DDIM/DDPM schedulers choose them."""
    _check_steps(sched, steps, spacing)
    T = sched.num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = T // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.int64) + sched.steps_offset
    else:
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    return ts


def fractional_timesteps(sched: NoiseSchedule, steps: int, spacing: str = "linspace") -> np.ndarray:
    """Descending float timesteps as diffusers' Euler/Heun schedulers choose them."""
    _check_steps(sched, steps, spacing)
    T = sched.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = T // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(np.float32)
        return ts + sched.steps_offset
    ts = np.arange(T, 0, -T / steps).round().copy().astype(np.float32)
    return ts - 1


def dpm_timesteps(sched: NoiseSchedule, steps: int, spacing: str = "linspace") -> np.ndarray:
    """Descending integer timesteps as diffusers' DPMSolverMultistepScheduler chooses them."""
    _check_steps(sched, steps, spacing)
    T = sched.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = T // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        return ts + sched.steps_offset
    return np.arange(T, 0, -T / steps).round().copy().astype(np.int64) - 1


def sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """Invert σ(t) by interpolation in log σ (diffusers ``_sigma_to_t``)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo, hi = log_sigmas[low], log_sigmas[high]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return float(((1 - w) * low + w * high).reshape(np.shape(sigma)))


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@dataclass(frozen=True)
class Plan:
    """Where a run evaluates the model: ``timesteps[i]`` (what the network sees) and
    ``sigmas[i]`` for i = 0..N−1, plus ``sigmas[N]`` (0 or the final σ) where the chain ends.
    ``alpha_bars`` = 1/(1+σ²) at the same N+1 points."""

    timesteps: np.ndarray
    sigmas: np.ndarray
    alpha_bars: np.ndarray
    spacing: str
    karras: bool = False

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def _abar_from_sigmas(sig: np.ndarray) -> np.ndarray:
    s = sig.astype(np.float64)
    return 1.0 / (1.0 + s * s)


def discrete_plan(sched: NoiseSchedule, steps: int, spacing: str = "leading") -> Plan:
    """Plan on integer timesteps (DDPM, DDIM, Langevin); the last point is the final ᾱ."""
    ts = integer_timesteps(sched, steps, spacing)
    ab = np.array([sched.alpha_bar(int(t)) for t in ts] + [sched.final_alpha_cumprod], dtype=np.float64)
    with np.errstate(divide="ignore"):  # ᾱ = 0 (zero terminal SNR): σ = ∞
        sig = np.sqrt((1 - ab) / ab)
    return Plan(ts.astype(np.float64), sig, ab, spacing)


def sigma_plan(sched: NoiseSchedule, steps: int, spacing: str = "linspace", karras: bool = False) -> Plan:
    """Plan in σ for the k-diffusion samplers (Euler, Euler a, Heun), as diffusers' Euler scheduler."""
    ts = fractional_timesteps(sched, steps, spacing)
    all_sigmas = sched.sigmas
    sig = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    if karras:
        sig = karras_sigmas(float(sig[-1]), float(sig[0]), steps)
        log_sigmas = np.log(all_sigmas)
        ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
    sig = np.concatenate([sig, [0.0]]).astype(np.float32)
    return Plan(np.asarray(ts, dtype=np.float64), sig, _abar_from_sigmas(sig), spacing, karras)


def dpm_plan(sched: NoiseSchedule, steps: int, spacing: str = "linspace", karras: bool = False) -> Plan:
    """Plan for DPM-Solver++ as diffusers' DPMSolverMultistepScheduler (final σ = 0)."""
    all_sigmas = sched.sigmas
    log_sigmas = np.log(all_sigmas)
    if karras:
        _check_steps(sched, steps, spacing)
        flipped = np.flip(all_sigmas).copy()
        sig = karras_sigmas(float(flipped[-1]), float(flipped[0]), steps)
        ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
        # diffusers rounds, except for the cosine schedule where its int64 cast truncates
        ts = ts.round() if sched.beta_schedule != "squaredcos_cap_v2" else np.floor(ts)
    else:
        ts = dpm_timesteps(sched, steps, spacing)
        if steps > 1 and not (np.diff(ts) < 0).all():
            raise ScheduleError(f"{steps} steps with {spacing!r} spacing repeat a timestep; use fewer steps "
                                "or another spacing")
        sig = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    sig = np.concatenate([sig, [0.0]]).astype(np.float32)
    return Plan(np.asarray(ts, dtype=np.float64), sig, _abar_from_sigmas(sig), spacing, karras)
