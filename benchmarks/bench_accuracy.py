"""Figure 7: accuracy per cost of every registered sampler on the exact ``gmm`` model.

Every sampler of the registry (``studio.core.samplers.SAMPLERS``, so samplers added later join on the next
run), with its default options, on its default σ spacing and, where it runs on a σ plan (``takes_karras``),
also on Karras et al. 2022's (eq. 5, ρ = 7), at budgets of 5, 10, 20, 50 and 100 denoiser evaluations
(NFE). A budget is met by the most steps whose evaluations on their plan, as the sampler's registry entry
counts them (``SamplerSpec.evals``), do not exceed it; the NFE actually used is recorded (Heun at 10: 5 steps, 9 NFE).
A budget that no step count comes near (the most steps that fit use less than half of it: restart,
whose restarts add their evaluations at once) is left out and listed.

- ``ode_error``, for the samplers that draw no fresh noise with their default options: the median over
  samples of the per-pixel RMS distance (image scale, [−1, 1]) between a sampler's final sample and a fine
  solve of the probability-flow ODE from the same x_T over the same σ range (the plan's first σ to its
  last): classical Runge–Kutta 4 on dz/du = ρ (z − x̂₀*(z))/u in u = σ^{1/ρ} (z = x_t/√ᾱ, Karras et al.
  2022, eq. 4), with the exact x̂₀* of the mixture, down to σ = 1e-5 and an Euler step to 0. Its own error
  is gauged once: the same solve at half the steps, against it (``reference.half_steps_median_rms``). ``flips``: the
  fraction of samples that end nearest another component than their reference solve.
- ``tv``, for every sampler: the total-variation distance ½ Σ_k |w̄_k − π_k| between the mixture weights
  the samples carry (the mean exact posterior p(k | x₀): the sweeps' ``weight_error``) and the true π,
  with a 95 % interval from a bootstrap over the samples (``BOOTSTRAP`` resamples; ``tv_with_interval``).
  Sampling noise alone gives exact samples of the mixture a TV above 0: ``exact_tv`` is that floor at the
  same count.

The stochastic samplers solve the reverse SDE (or are Markov chains), so their ODE error is not defined;
the deterministic ones are ranked by both. A sampler whose registry entry says it solves neither equation
(``SamplerSpec.for_consistency_models``: LCM) is measured by TV only and listed apart,
outside the ranking; an entry without that flag counts as a solver.

Two stand-ins keep runs of thousands of samples affordable; neither changes what is computed. ``MatmulGMM`` evaluates
the studio's mixture by matrix products instead of a batch × components × pixels broadcast (checked equal
to the studio's model before every run), and ``BatchNoise`` draws each step's noise for the whole batch
from one generator (keyed by seed, step and draw) instead of one per sample: the same N(0, I) noise in
law, so the samples' distribution is the same. The chains run the registry's sampler functions with the
studio's ``Denoiser`` and plans, as ``studio.core.engine.sample`` does.

Run ``python -m benchmarks.bench_accuracy`` (``--quick`` for a smoke run, ``--samples N``, ``--from-json`` to
redraw from the last results); it writes ``benchmarks/accuracy.json`` and ``benchmarks/accuracy.png`` and
prints RESULTS.md §7 (with the digits rows of ``benchmarks/sweep_samplers.json``, from ``sweep_samplers.py``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from studio.core.denoiser import Denoiser
from studio.core.engine import model_plan, schedule_for
from studio.core.gmm import GaussianMixtureModel
from studio.core.noise import NoiseSource
from studio.core.samplers import SAMPLER_GROUPS, SAMPLERS, SamplerSpec
from studio.core.schedule import Plan

BUDGETS = (5, 10, 20, 50, 100)
SAMPLES = 3000  # per stochastic sampler and budget, for the TV and its interval
DETERMINISTIC_SAMPLES = 1000  # per deterministic one (its figure is the ODE error)
ODE_SAMPLES = 500  # the first of them, for the ODE error (the reference solve's cost)
REFERENCE_STEPS = 200  # RK4 steps of the reference solve (4 evaluations each)
RHO = 7.0
SIGMA_FLOOR = 1e-5  # the reference solve ends with an Euler step from here to σ = 0
BOOTSTRAP = 1000
HERE = Path(__file__).parent


# -- what is measured -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One line of the figure: a registered sampler with its default options, on default or Karras σ."""

    sampler: str
    karras: bool

    @property
    def label(self) -> str:
        return f"{self.sampler} karras" if self.karras else self.sampler

    @property
    def spec(self) -> SamplerSpec:
        return SAMPLERS[self.sampler]


def is_solver(spec: SamplerSpec) -> bool:
    """Whether the sampler discretises the probability-flow ODE or the reverse SDE of a diffusion model: not
    one meant for consistency-distilled models (the registry's ``for_consistency_models``; an entry without
    that flag counts as a solver)."""
    return not getattr(spec, "for_consistency_models", False)


def kind(spec: SamplerSpec) -> str:
    """"ode" (draws no fresh noise with its defaults), "sde", or "not a solver"."""
    if not is_solver(spec):
        return "not a solver"
    return "ode" if spec.is_deterministic() else "sde"


def variants(samplers: dict[str, SamplerSpec] = SAMPLERS) -> list[Variant]:
    """Every sampler on its default spacing, and on Karras σ where it takes them, in registry order."""
    return [Variant(name, k) for name, spec in samplers.items() for k in ((False, True) if spec.takes_karras
                                                                           else (False,))]


def steps_for(spec: SamplerSpec, nfe: int, plan_for: Callable[[int], Plan]) -> Optional[int]:
    """The most steps whose evaluations on their plan (``plan_for(steps)``), as the registry entry counts them,
    fit in ``nfe``; None if none do. Step counts the sampler's plan refuses are passed over."""
    fits = []
    for steps in range(1, nfe + 1):
        try:
            plan = plan_for(steps)
        except ValueError:
            continue
        if spec.evals(steps, plan=plan) <= nfe:
            fits.append(steps)
    return max(fits) if fits else None


# -- the exact model and the chains -----------------------------------------------------------------------
class MatmulGMM(GaussianMixtureModel):
    """The studio's ``gmm`` with its closed forms as matrix products: ‖x − aμ_k‖² = ‖x‖² − 2a x·μ_k + a²‖μ_k‖²
    and ∇log p_t = Σ_k r_k (aμ_k − x)/v_k = (r/v) aM − x Σ_k r_k/v_k (M: the means as rows)."""

    def component_log_densities(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        a, b = self._ab(sigma)
        xf = x.to(torch.float64).reshape(x.shape[0], -1)
        mu = self.means.reshape(self.means.shape[0], -1)
        v = a * a * self.stds**2 + b * b
        sq = (xf * xf).sum(1, keepdim=True) - 2 * a * (xf @ mu.T) + a * a * (mu * mu).sum(1)
        return torch.log(self.weights) - sq / (2 * v) - 0.5 * self.dim * torch.log(2 * math.pi * v)

    def score(self, x: torch.Tensor, sigma: float, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        a, b = self._ab(sigma)
        k = self.means.shape[0]
        xf = x.to(torch.float64).reshape(x.shape[0], -1)
        r = self.responsibilities(xf, sigma)
        if labels is not None:  # a label picks its component; the null label (k) keeps the mixture
            onehot = torch.nn.functional.one_hot(labels.clamp(max=k - 1).long(), k).to(torch.float64)
            r = torch.where((labels < k).view(-1, 1), onehot, r)
        w = r / (a * a * self.stds**2 + b * b)
        mu = self.means.reshape(k, -1)
        return ((a * w) @ mu - xf * w.sum(1, keepdim=True)).reshape(x.shape)


def check_same(model: GaussianMixtureModel) -> float:
    """The largest relative difference between ``model``'s score and the studio's own gmm's, over σ from 0
    to σ_max; refuses to go on above 1e-10."""
    studio = GaussianMixtureModel()
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(64, *studio.means.shape[1:], generator=g, dtype=torch.float64)
    x0 = studio.means[torch.randint(len(studio.weights), (64,), generator=g)]
    worst = 0.0
    for sigma in (0.0, 0.01, 0.1, 1.0, 10.0, 157.0):
        a, b = studio._ab(sigma)
        xs = a * x0 + max(b, 0.1) * eps  # on the mixture's support at σ (a little off it at σ = 0)
        ref = studio.score(xs, sigma)
        worst = max(worst, ((model.score(xs, sigma) - ref).abs().max() / ref.abs().max()).item())
    if worst > 1e-10:
        raise SystemExit(f"MatmulGMM differs from studio.core.gmm by {worst:.2e}; fix it before measuring")
    return worst


class BatchNoise(NoiseSource):
    """Each draw (seed, step, draw) for the whole batch from one generator: N(0, I) like the studio's, whose
    per-sample generators make a draw cost more than an exact evaluation at these batch sizes."""

    def _draw(self, key: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2, dtype=np.uint32)
        g = torch.Generator(device="cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)


def final(model, variant: Variant, steps: int, x_t: torch.Tensor, seed: int):
    """The final samples (VP scale = image scale at σ = 0), the NFE used, and the plan, of one chain from
    ``x_t``: the sampler's own function with the studio's plan and an unguided ``Denoiser``."""
    spec = variant.spec
    plan = model_plan(model, spec, steps, karras=variant.karras)
    opts = spec.resolve()
    if spec.schedule_inputs is not None:
        opts.update(spec.schedule_inputs(schedule_for(model)))
    rec = None
    for rec in spec.fn(Denoiser(model), x_t, plan, BatchNoise(seed), **opts):
        pass
    return rec.x, rec.nfe, plan


def reference_solve(model: GaussianMixtureModel, x_t: torch.Tensor, sigma_from: float, sigma_to: float,
                    steps: int) -> torch.Tensor:
    """The probability-flow ODE from x_t (VP scale) at ``sigma_from`` to ``sigma_to``, in float64: RK4 on
    dz/du = ρ (z − x̂₀*(z; σ))/u, σ = u^ρ, z = x_t √(1+σ²), evenly in u down to max(σ_to, SIGMA_FLOOR),
    then (σ_to = 0) the Euler step z ← x̂₀*(z; SIGMA_FLOOR)."""
    def d(sigma: float) -> float:
        return 1.0 / math.sqrt(1.0 + sigma * sigma)

    def f(z: torch.Tensor, u: float) -> torch.Tensor:
        sigma = u ** RHO
        return RHO * (z - model.x0(z * d(sigma), sigma)) / u

    end = max(sigma_to, SIGMA_FLOOR)
    us = np.linspace(sigma_from ** (1 / RHO), end ** (1 / RHO), steps + 1)
    z = x_t.double() / d(sigma_from)
    for u, u_next in zip(us[:-1], us[1:]):
        h = u_next - u
        k1 = f(z, u)
        k2 = f(z + h / 2 * k1, u + h / 2)
        k3 = f(z + h / 2 * k2, u + h / 2)
        k4 = f(z + h * k3, u_next)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    if sigma_to == 0:
        return model.x0(z * d(end), end)
    return z * d(sigma_to)


# -- the statistics ---------------------------------------------------------------------------------------
def carried_weights(model: GaussianMixtureModel, x: torch.Tensor) -> torch.Tensor:
    """(N, K): the exact posterior p(k | x₀) of every sample."""
    return model.responsibilities(x, 0.0)


def tv_with_interval(post: torch.Tensor, pi: torch.Tensor, seed: int = 0) -> tuple[float, float, float]:
    """½ ‖w̄ − π‖₁ for the mean posterior w̄, and a 95 % interval for the sampler's true TV: the bootstrap's 95 %
    quantile c of ‖w̄* − w̄‖₁ bounds ‖w̄ − w‖₁ (w the true weights), so by the triangle inequality the true TV
    lies in [½(‖w̄ − π‖₁ − c), ½(‖w̄ − π‖₁ + c)], clipped at 0. (A percentile interval of the resampled TVs would
    not do: |·| biases them upwards, above the estimate itself near TV = 0.)"""
    g = torch.Generator().manual_seed(seed)
    n = post.shape[0]
    mean = post.mean(0)
    radii = []
    for _ in range(BOOTSTRAP // 100):
        idx = torch.randint(n, (100, n), generator=g)
        counts = torch.zeros(100, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(100, n, dtype=torch.float64))
        radii.append((counts @ post / n - mean).abs().sum(-1))
    c = torch.quantile(torch.cat(radii), 0.95).item()
    tv = 0.5 * (mean - pi).abs().sum().item()
    return tv, max(0.0, tv - c / 2), tv + c / 2


def run(quick: bool = False, samples: int = SAMPLES, seed: int = 0, log=print) -> dict:
    model = MatmulGMM()
    agreement = check_same(model)
    budgets = BUDGETS[:2] if quick else BUDGETS
    n = 400 if quick else samples
    n_det = min(n, 200 if quick else DETERMINISTIC_SAMPLES)
    n_ode = min(200 if quick else ODE_SAMPLES, n_det)
    ref_steps = 100 if quick else REFERENCE_STEPS
    pi = model.weights.double()
    shape = (n, *model.means.shape[1:])
    x_t = BatchNoise(seed).initial(shape)
    references: dict[tuple[float, float], torch.Tensor] = {}
    ref_error = {}

    def reference(sigma_from: float, sigma_to: float) -> torch.Tensor:
        key = (sigma_from, sigma_to)
        if key not in references:
            references[key] = reference_solve(model, x_t[:n_ode], sigma_from, sigma_to, ref_steps)
            if not ref_error:  # the solve's own error, once: the same solve at half the steps against it
                half = reference_solve(model, x_t[:n_ode], sigma_from, sigma_to, ref_steps // 2)
                ref_error.update(sigma_from=sigma_from, steps=ref_steps, half_steps_median_rms=rms(half, references[key]))
        return references[key]

    rows, skipped = [], []
    started = time.perf_counter()
    for v in variants():
        k = kind(v.spec)
        for budget in budgets:
            steps = steps_for(v.spec, budget, lambda s, v=v: model_plan(model, v.spec, s, karras=v.karras))
            if steps is None:
                skipped.append({"sampler": v.label, "nfe_budget": budget, "why": "not even one step fits"})
                continue
            planned = v.spec.evals(steps, plan=model_plan(model, v.spec, steps, karras=v.karras))
            if planned < budget / 2:
                skipped.append({"sampler": v.label, "nfe_budget": budget,
                                "why": f"the most steps that fit ({steps}) use only {planned} NFE"})
                continue
            x, nfe, plan = final(model, v, steps, x_t[:n_det] if k == "ode" else x_t, seed)
            post = carried_weights(model, x)
            tv, lo, hi = tv_with_interval(post, pi, seed)
            row = {"sampler": v.sampler, "label": v.label, "karras": v.karras, "group": v.spec.group, "kind": k,
                   "nfe_budget": budget, "steps": steps, "nfe": nfe, "samples": len(x),
                   "sigma_first": float(plan.sigmas[0]), "sigma_last": float(plan.sigmas[-1]),
                   "tv": tv, "tv_low": lo, "tv_high": hi}
            if k == "ode":
                ref = reference(float(plan.sigmas[0]), float(plan.sigmas[-1]))
                per = (x[:n_ode].double() - ref).pow(2).flatten(1).mean(1).sqrt()
                row.update(ode_error=per.median().item(), ode_error_mean=per.mean().item(), ode_samples=n_ode,
                           flips=(model.nearest_component(x[:n_ode]) != model.nearest_component(ref)).double().mean().item())
            rows.append(row)
            log(f"{v.label:22s} NFE {nfe:3d} ({steps:3d} steps)  TV {tv:.4f} [{lo:.4f}, {hi:.4f}]"
                + (f"  ODE err {row['ode_error']:.2e}" if "ode_error" in row else "")
                + f"   {time.perf_counter() - started:6.0f} s")
    exact = model.sample_exact(n, torch.Generator().manual_seed(seed))[0]
    etv, elo, ehi = tv_with_interval(carried_weights(model, exact), pi, seed)
    return {"rows": rows, "skipped": skipped, "budgets": list(budgets), "samples": n, "deterministic_samples": n_det,
            "ode_samples": n_ode,
            "bootstrap": BOOTSTRAP, "seed": seed, "exact_tv": etv, "exact_tv_low": elo, "exact_tv_high": ehi,
            "reference": {"method": f"RK4 in u = sigma^(1/{RHO:g}), Euler from sigma = {SIGMA_FLOOR:g} to 0",
                          **ref_error},
            "matmul_gmm_max_rel_diff": agreement, "seconds": time.perf_counter() - started}


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt().median().item()


# -- ranking, tables and the figure -----------------------------------------------------------------------
def ranking(result: dict) -> list[dict]:
    """Per budget: the deterministic samplers ordered by ODE error, and the stochastic ones by TV with those
    whose TV interval overlaps the best one's (not told apart at this sample count). The deterministic ones'
    TV, from fewer samples, is in the tables only."""
    out = []
    for budget in result["budgets"]:
        at = [r for r in result["rows"] if r["nfe_budget"] == budget and r["kind"] != "not a solver"]
        ode = sorted((r for r in at if "ode_error" in r), key=lambda r: r["ode_error"])
        tv = sorted((r for r in at if r["kind"] == "sde"), key=lambda r: r["tv"])
        best = tv[0] if tv else None
        tied = [r["label"] for r in tv[1:] if best and r["tv_low"] <= best["tv_high"]]
        out.append({"nfe_budget": budget, "ode": [(r["label"], r["ode_error"]) for r in ode],
                    "tv": [(r["label"], r["tv"]) for r in tv], "tv_tied_with_best": tied})
    return out


def _by_label(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["label"], []).append(r)
    return out


def _wide_table(rows: list[dict], budgets: list[int], fmt) -> list[str]:
    """One row per variant (registry order), one column per budget; the NFE used in brackets where it is
    below the budget."""
    out = ["| sampler | group | " + " | ".join(f"{b} NFE" for b in budgets) + " |",
           "|---|---|" + "---|" * len(budgets)]
    for label, rs in _by_label(rows).items():
        cells = []
        for b in budgets:
            r = next((r for r in rs if r["nfe_budget"] == b), None)
            cells.append("—" if r is None else fmt(r) + (f" ({r['nfe']})" if r["nfe"] != b else ""))
        out.append(f"| {label} | {rs[0]['group']} | " + " | ".join(cells) + " |")
    return out


def _names(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


ACCURACY_COMMAND = "python -m benchmarks.bench_accuracy"
DIGITS_JSON = HERE / "sweep_samplers.json"


def section(result: dict, digits: Optional[dict] = None) -> str:
    """RESULTS.md §7 from a run's result (and the digits sweep's, ``benchmarks/sweep_samplers.json``)."""
    budgets = result["budgets"]
    ref = result.get("reference", {})
    lines = [
        "## 7. Accuracy per cost: every sampler on the exact gmm model and the digits model", "",
        f"`{ACCURACY_COMMAND}` ({result['seconds'] / 60:.0f} min on this CPU, shared with other jobs; "
        "`benchmarks/accuracy.json`). Every "
        "sampler of the registry with its default options, on its default σ spacing and, where it runs on σ "
        "(`takes_karras`), on Karras σ; all from the same x_T (seed "
        f"{result['seed']}). **NFE matching:** each budget gets the most steps whose evaluations on their plan, as "
        "the registry counts them, do not exceed it; the NFE used is shown in brackets where it is lower (two-evaluation "
        "samplers: 2·steps − 1).", "",
        f"- **ODE error** (samplers that draw no noise): median over {result['ode_samples']} samples of the "
        "per-pixel RMS distance (image scale) to a fine solve of the probability-flow ODE from the same x_T over "
        f"the sampler's own σ range: {ref.get('method', 'RK4')}, {ref.get('steps', '?')} steps in float64 with "
        "the exact x̂₀*; the same solve at half the steps differs from it by "
        f"{ref.get('half_steps_median_rms', float('nan')):.1e} (RK4: its own error ≈ 1/16 of that).",
        f"- **TV**: ½ Σ_k |w̄_k − π_k| between the mixture weights {result['samples']} samples "
        f"({result.get('deterministic_samples', result['samples'])} for the deterministic samplers) carry (mean exact "
        "posterior p(k | x₀), the sweeps' `weight_error`) and π = (0.4, 0.3, 0.2, 0.1). 95 % interval for the "
        "sampler's true TV: the measured TV ± c/2, clipped at 0, where c is the 95 % quantile of the L1 distance "
        f"between resampled and measured weights ({result['bootstrap']} bootstrap resamples of the samples); by the "
        "triangle inequality it covers the truth when that ball covers the true weights. Exact mixture samples "
        f"measure TV {result['exact_tv']:.4f} [{result['exact_tv_low']:.4f}, {result['exact_tv_high']:.4f}] at "
        f"{result['samples']} samples (the grey band in the figure): sampling noise alone.",
        "", "![accuracy per cost](accuracy.png)", "",
        "ODE error of the deterministic samplers:", ""]
    lines += _wide_table([r for r in result["rows"] if r["kind"] == "ode"], budgets, lambda r: f"{r['ode_error']:.1e}")
    lines += ["", "Mixture-weight TV [95 % interval], stochastic samplers first:", ""]
    lines += _wide_table(sorted([r for r in result["rows"] if r["kind"] != "not a solver"],
                                key=lambda r: r["kind"] != "sde"), budgets,
                         lambda r: f"{r['tv']:.3f} [{r['tv_low']:.3f}, {r['tv_high']:.3f}]")
    other = [r for r in result["rows"] if r["kind"] == "not a solver"]
    if other:
        lines += ["", "Samplers whose registry entry says they solve neither equation (TV only, not ranked):", ""]
        lines += _wide_table(other, budgets, lambda r: f"{r['tv']:.3f} [{r['tv_low']:.3f}, {r['tv_high']:.3f}]")
    for s in result.get("skipped", []):
        lines.append(f"- {s['sampler']} at {s['nfe_budget']} NFE: left out, {s['why']}.")
    lines += ["", "Ranking per budget:", "", "| budget | lowest ODE error (3 best) | lowest TV, stochastic | "
              "their intervals overlap its |",
              "|---|---|---|---|"]
    for rk in ranking(result):
        ode = ", ".join(f"{n} {e:.1e}" for n, e in rk["ode"][:3])
        tv = f"{rk['tv'][0][0]} {rk['tv'][0][1]:.3f}" if rk["tv"] else "—"
        tied = rk["tv_tied_with_best"]
        lines.append(f"| {rk['nfe_budget']} | {ode} | {tv} | {len(tied)}: {_names(tied)} |" if tied else
                     f"| {rk['nfe_budget']} | {ode} | {tv} | none |")
    if digits is None and DIGITS_JSON.exists():
        digits = json.loads(DIGITS_JSON.read_text())
    if digits:
        lines += ["", digits_section(digits)]
    return "\n".join(lines) + "\n"


def digits_section(d: dict) -> str:
    """The digits-model subsection of §7 from ``benchmarks/sweep_samplers.json`` (benchmarks/sweep_samplers.py)."""
    budgets = d["budgets"]
    lines = [f"### Digits model (`{d['command']}`)", "",
             f"Each sampler with its default options on the shipped digits model's own plan (its scheduler's "
             f"spacing, x̂₀ clipped), labels 0–9, {d['images_per_setting']} images per sampler and budget "
             f"({d['images_per_setting'] // 10} per label), no guidance; the same NFE matching. "
             f"Fréchet distance in the evaluator's features against {d['fd_reference']} held-out images of the "
             "same labels, ± 1.96 bootstrap standard deviations over the samples (the reference fixed); with "
             "fewer images than the evaluator's 128 features the distance is biased upwards alike for every row, "
             "so compare rows, not with other tables; "
             "accuracy: the fraction the evaluator reads as the requested digit, with a 95 % Wilson interval. "
             f"{d['minutes']:.0f} min for {d['cells']} cells on this CPU, shared with other jobs (higher budgets: "
             f"`{d['command']} --budgets 10 20 50`).", "",
             "Fréchet distance [95 %] / accuracy [95 %]:", ""]
    lines += _wide_table(d["rows"], budgets, lambda r: (
        f"{r['frechet']:.2f} [{r['frechet_low']:.2f}, {r['frechet_high']:.2f}] / "
        f"{r['accuracy']:.2f} [{r['accuracy_low']:.2f}, {r['accuracy_high']:.2f}]"))
    for s in d.get("left_out", []):
        lines.append(f"- {s['sampler']}" + (f" at {s['nfe_budget']} NFE" if "nfe_budget" in s else "")
                     + f": left out, {s['why']}.")
    return "\n".join(lines)


GROUP_COLOURS = {"ODE": "Blues", "multistep": "Greens", "ancestral": "Oranges", "SDE": "Purples",
                 "consistency": "Greys", "other": "Greys"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def styles(labels_by_group: dict[str, list[str]]) -> dict[str, dict]:
    """Colour family from the sampler's group, and within it a shade and a marker per sampler; solid on
    default σ, dashed on Karras σ."""
    import matplotlib

    out = {}
    for group, labels in labels_by_group.items():
        samplers = list(dict.fromkeys(lab.removesuffix(" karras") for lab in labels))
        cmap = matplotlib.colormaps[GROUP_COLOURS.get(group, "Greys")]
        for lab in labels:
            i = samplers.index(lab.removesuffix(" karras"))
            shade = 0.5 + 0.45 * (i / max(len(samplers) - 1, 1))
            out[lab] = {"color": cmap(shade), "ls": "--" if lab.endswith(" karras") else "-",
                        "marker": MARKERS[i % len(MARKERS)], "ms": 5, "lw": 1.4,
                        "mfc": "none" if lab.endswith(" karras") else cmap(shade)}
    return out


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = {g: i for i, g in enumerate(SAMPLER_GROUPS)}
    rows = sorted(result["rows"], key=lambda r: order.get(r["group"], 99))
    fig, axes = plt.subplots(1, 2, figsize=(15, 8.5))
    panels = [(axes[0], [r for r in rows if r["kind"] == "ode"], "ode_error"),
              (axes[1], [r for r in rows if r["kind"] != "ode"], "tv")]
    for ax, prs, metric in panels:
        by_label = _by_label(prs)
        groups: dict[str, list[str]] = {}
        for label, rs in by_label.items():
            groups.setdefault(rs[0]["group"], []).append(label)
        st = styles(groups)
        for j, (label, rs) in enumerate(by_label.items()):
            s = dict(st[label])
            if rs[0]["kind"] == "not a solver":
                s.update(color="k", ls=":", marker="x")
                label += " (not a solver)"
            nfe = np.array([r["nfe"] for r in rs], dtype=float)
            y = np.array([r[metric] for r in rs])
            if metric == "tv":  # spread the bars a little so that they do not hide each other
                nfe = nfe * (1 + 0.016 * (j - len(by_label) / 2))
                err = np.array([[r["tv"] - r["tv_low"] for r in rs], [r["tv_high"] - r["tv"] for r in rs]])
                ax.errorbar(nfe, y, yerr=err, label=label, capsize=2, elinewidth=0.8, **s)
            else:
                ax.plot(nfe, y, label=label, **s)
        ax.set_xscale("log")
        if metric == "tv":  # linear near 0, where the intervals end, logarithmic above
            ax.set_yscale("symlog", linthresh=0.02, linscale=0.6)
            ax.set_ylim(0, 1)
            ax.set_yticks([0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1], ["0", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1"])
        else:
            ax.set_yscale("log")
        ax.set_xticks(result["budgets"], [str(b) for b in result["budgets"]])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
    axes[1].axhspan(result["exact_tv_low"], result["exact_tv_high"], color="k", alpha=0.12, lw=0)
    axes[1].axhline(result["exact_tv"], color="k", lw=0.8, ls=":", label="exact samples (noise floor)")
    axes[0].set(xlabel="denoiser evaluations (NFE)", ylabel="median RMS distance to the reference ODE solve",
                title=f"Deterministic samplers: ODE error ({result['ode_samples']} samples)")
    axes[1].set(xlabel="denoiser evaluations (NFE)", ylabel="TV of the mixture weights (95 % interval)",
                title=f"Stochastic samplers: mixture-weight error ({result['samples']} samples)")
    for ax in axes:
        ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.09), frameon=False)
    fig.suptitle("Exact gmm: solid line, filled marker = default σ spacing; dashed, open = Karras σ. Colour = sampler "
                 "group: blue ODE, green multistep, orange ancestral, purple SDE, grey other", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    stem = "accuracy_quick" if quick else "accuracy"
    if "--from-json" in argv:  # redraw the figure and the text from the last run's results
        res = json.loads((HERE / f"{stem}.json").read_text())
    else:
        samples = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else SAMPLES
        torch.set_num_threads(1)  # small tensors: a second thread only contends with other work on the machine
        res = run(quick=quick, samples=samples, log=lambda s: print(s, file=sys.stderr, flush=True))
    res["ranking"] = ranking(res)
    (HERE / f"{stem}.json").write_text(json.dumps(res, indent=1))
    plot(res, HERE / f"{stem}.png")
    print(section(res))


if __name__ == "__main__":
    main(sys.argv[1:])
