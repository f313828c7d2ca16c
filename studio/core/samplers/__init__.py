"""The sampler registry: every sampler yields one StepRecord per step (see ``records``).

Each entry declares its options (``Option``: default, range or choices, help); :func:`option_schema`
gathers them by name for the recipe, the command line and the window."""
from __future__ import annotations

import dataclasses

from ..options import Option
from .base import NOISE_TYPE, SAMPLER_GROUPS, SamplerSpec, training_log_sigmas
from .ddpm import DDIM_ETA, PREV_TIMESTEP, VARIANCE, sample_ddim, sample_ddpm, training_alpha_bars
from .deis import DEIS_ORDER, sample_deis
from .dpm2 import DPM2_A_ETA, sample_dpm2, sample_dpm2_ancestral
from .dpmsolver import sample_dpmpp_2m
from .dpmsolver_sde import SDE_ETA, SOLVER_TYPE, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde
from .dpmsolver_single import DPMPP_2S_A_ETA, DPMPP_SDE_ETA, sample_dpmpp_2s_ancestral, sample_dpmpp_sde
from .kdiffusion import CHURN, EULER_A_ETA, two_but_the_last, sample_euler, sample_euler_ancestral, sample_heun
from .langevin import CORRECTOR_STEPS, SNR, corrector_alphas, evaluations, sample_langevin
from .lcm import ORIGINAL_STEPS, lcm_plan, sample_lcm
from .lms import LMS_ORDER, sample_lms
from .restart import RESTART, restart_evals, sample_restart
from .unipc import UNIPC_ORDER, UNIPC_VARIANT, sample_unipc

SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec("ddpm", sample_ddpm, "ancestral DDPM (Ho et al. 2020, Alg. 2); variance fixed_small or fixed_large",
                    "discrete", False, (VARIANCE,), "leading", classifier_mean_shift=True, group="ancestral"),
        SamplerSpec("ddim", sample_ddim, "DDIM (Song et al. 2021); eta=0 deterministic, eta=1 DDPM-like",
                    "discrete", True, (DDIM_ETA, PREV_TIMESTEP), "leading", noise_option="eta",
                    schedule_inputs=training_alpha_bars, group="ODE"),
        SamplerSpec("euler", sample_euler, "Euler on the probability-flow ODE (Karras et al. 2022); s_churn > 0 adds "
                    "EDM's stochastic churn (Alg. 2)", "sigma", True, CHURN, "linspace", noise_option="s_churn",
                    schedule_inputs=training_log_sigmas, group="ODE"),
        SamplerSpec("euler_a", sample_euler_ancestral, "ancestral Euler: Euler step plus fresh noise (k-diffusion); eta=0 no noise",
                    "sigma", False, (EULER_A_ETA,), "linspace", noise_option="eta", group="ancestral"),
        SamplerSpec("heun", sample_heun, "Heun 2nd order (Karras et al. 2022, Alg. 1); 2 evaluations per step; "
                    "s_churn > 0 adds EDM's stochastic churn (Alg. 2)", "sigma", True, CHURN, "linspace",
                    two_but_the_last, noise_option="s_churn", schedule_inputs=training_log_sigmas, group="ODE"),
        SamplerSpec("dpmpp_2m", sample_dpmpp_2m, "DPM-Solver++(2M) multistep (Lu et al. 2022)",
                    "dpm", True, (), "linspace", group="multistep"),
        SamplerSpec("lms", sample_lms, "linear multistep in σ (k-diffusion; the web UIs' LMS): a polynomial through "
                    "the last `order` slopes", "sigma", True, (LMS_ORDER,), "linspace", group="multistep"),
        SamplerSpec("dpm2", sample_dpm2, "DPM2 (k-diffusion; Karras et al. 2022): midpoint 2nd order in log σ; 2 "
                    "evaluations per step", "sigma", True, CHURN, "linspace", two_but_the_last,
                    noise_option="s_churn", schedule_inputs=training_log_sigmas, group="ODE"),
        SamplerSpec("dpm2_a", sample_dpm2_ancestral, "DPM2 ancestral (k-diffusion): a DPM2 step to σ_down plus "
                    "fresh noise; 2 evaluations per step", "sigma", False, (DPM2_A_ETA,), "linspace",
                    two_but_the_last, noise_option="eta", schedule_inputs=training_log_sigmas, group="ancestral"),
        SamplerSpec("dpmpp_2s_a", sample_dpmpp_2s_ancestral, "DPM-Solver++(2S) ancestral (Lu et al. 2022; "
                    "k-diffusion): single-step 2nd order plus fresh noise; 2 evaluations per step", "sigma", False,
                    (DPMPP_2S_A_ETA,), "linspace", two_but_the_last, noise_option="eta",
                    schedule_inputs=training_log_sigmas, group="ancestral"),
        SamplerSpec("dpmpp_sde", sample_dpmpp_sde, "DPM-Solver++ SDE (Lu et al. 2022; k-diffusion): stochastic "
                    "steps through a midpoint; 2 evaluations per step", "sigma", False, (DPMPP_SDE_ETA, NOISE_TYPE),
                    "linspace", two_but_the_last, noise_option="eta", schedule_inputs=training_log_sigmas, group="SDE"),
        SamplerSpec("dpmpp_2m_sde", sample_dpmpp_2m_sde, "DPM-Solver++(2M) SDE (Lu et al. 2022; k-diffusion): "
                    "multistep 2nd order on the reverse SDE", "dpm", False, (SDE_ETA, SOLVER_TYPE, NOISE_TYPE),
                    "linspace", noise_option="eta", group="SDE"),
        SamplerSpec("dpmpp_3m_sde", sample_dpmpp_3m_sde, "DPM-Solver++(3M) SDE (Lu et al. 2022; k-diffusion): "
                    "multistep 3rd order on the reverse SDE", "dpm", False, (SDE_ETA, NOISE_TYPE), "linspace",
                    noise_option="eta", group="SDE"),
        SamplerSpec("unipc", sample_unipc, "UniPC (Zhao et al. 2023): multistep predictor with a corrector that "
                    "reuses the next evaluation; bh1/bh2, order 1–4", "dpm", True, (UNIPC_ORDER, UNIPC_VARIANT),
                    "linspace", group="multistep"),
        SamplerSpec("deis", sample_deis, "DEIS (Zhang & Chen 2023): exponential-integrator multistep on ε̂, a "
                    "polynomial in log σ; order 1–4", "dpm", True, (DEIS_ORDER,), "linspace", group="multistep"),
        SamplerSpec("lcm", sample_lcm, "Latent Consistency Model sampling (Luo et al. 2023; diffusers' "
                    "LCMScheduler): x̂₀ with the consistency boundary conditions, then fresh noise to the next of its "
                    "own timesteps; for LCM and LCM-LoRA models only: not an ODE solver, so left out of the exact-gmm "
                    "accuracy tests", "own", False, (ORIGINAL_STEPS,), "leading", own_plan=lcm_plan,
                    for_consistency_models=True, group="consistency"),
        SamplerSpec("restart", sample_restart, "Restart sampling (Xu et al. 2023; A1111's Restart): Heun on the ODE, "
                    "and K times a jump back up to t_max by forward noise, re-solved down to t_min; 2 evaluations per "
                    "step plus 2·K·restart_steps", "sigma", False, RESTART, "linspace", restart_evals,
                    noise_option="restart_times", schedule_inputs=training_log_sigmas, group="other"),
        SamplerSpec("langevin", sample_langevin,
                    "predictor-corrector: annealed Langevin corrector + ancestral predictor (Song et al. 2021)",
                    "discrete", False, (CORRECTOR_STEPS, SNR), "leading", evaluations,
                    schedule_inputs=corrector_alphas, group="other"),
    ]
}

# what samplers sharing an option name must agree on (the defaults and help may differ)
_SHARED = ("kind", "low", "high", "low_open", "high_open", "choices", "label")


def option_schema(samplers: dict[str, SamplerSpec] = SAMPLERS) -> dict[str, Option]:
    """Every sampler option by name, as one setting of a run: null means "the sampler's own default".

    Options of the same name must agree on kind and allowed values (they are one recipe field and
    one widget); their help lines are joined, each with its sampler and default."""
    merged: dict[str, Option] = {}
    helps: dict[str, list[str]] = {}
    for spec in samplers.values():
        for name, opt in spec.options.items():
            first = merged.setdefault(name, opt)
            for attr in _SHARED:
                if getattr(first, attr) != getattr(opt, attr):
                    raise ValueError(f"sampler option {name!r}: {spec.name} declares {attr}={getattr(opt, attr)!r} "
                                     f"but another sampler {getattr(first, attr)!r}; shared options must agree")
            helps.setdefault(name, []).append(f"{spec.name}: {opt.help} (default {opt.default})")
    return {name: dataclasses.replace(opt, default=None, optional=True, help="; ".join(helps[name]))
            for name, opt in merged.items()}


def samplers_with(capability: str, samplers: dict[str, SamplerSpec] = SAMPLERS) -> tuple[str, ...]:
    """The names of the samplers that have ``capability`` (a flag or property of ``SamplerSpec``, e.g.
    ``takes_karras``), in registry order: what help texts and refusals list."""
    return tuple(name for name, spec in samplers.items() if getattr(spec, capability))


def samplers_by_group(samplers: dict[str, SamplerSpec] = SAMPLERS) -> dict[str, tuple[str, ...]]:
    """The sampler names under their declared ``group``, groups in ``SAMPLER_GROUPS`` order, samplers in
    registry order (a group without samplers left out): what the sampler picker and `studio samplers` show."""
    groups = {g: tuple(n for n, spec in samplers.items() if spec.group == g) for g in SAMPLER_GROUPS}
    return {g: names for g, names in groups.items() if names}


def get_sampler(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


OPTION_SCHEMA = option_schema()

__all__ = ["SAMPLERS", "SAMPLER_GROUPS", "OPTION_SCHEMA", "Option", "SamplerSpec", "get_sampler", "option_schema",
           "samplers_by_group", "samplers_with"]
