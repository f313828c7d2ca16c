"""The sampler registry: every sampler yields one StepRecord per step (see ``records``)."""
from __future__ import annotations

from .base import SamplerSpec
from .ddpm import sample_ddim, sample_ddpm
from .dpmsolver import sample_dpmpp_2m
from .kdiffusion import sample_euler, sample_euler_ancestral, sample_heun
from .langevin import sample_langevin

SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec("ddpm", sample_ddpm, "ancestral DDPM (Ho et al. 2020, Alg. 2); variance fixed_small or fixed_large",
                    "discrete", False, ("variance",), "leading"),
        SamplerSpec("ddim", sample_ddim, "DDIM (Song et al. 2021); eta=0 deterministic, eta=1 DDPM-like",
                    "discrete", True, ("eta",), "leading"),
        SamplerSpec("euler", sample_euler, "Euler on the probability-flow ODE (Karras et al. 2022)",
                    "sigma", True, (), "linspace"),
        SamplerSpec("euler_a", sample_euler_ancestral, "ancestral Euler: Euler step plus fresh noise (k-diffusion)",
                    "sigma", False, ("eta",), "linspace"),
        SamplerSpec("heun", sample_heun, "Heun 2nd order (Karras et al. 2022, Alg. 1); 2 evaluations per step",
                    "sigma", True, (), "linspace", lambda n: 2 * n - 1),
        SamplerSpec("dpmpp_2m", sample_dpmpp_2m, "DPM-Solver++(2M) multistep (Lu et al. 2022)",
                    "dpm", True, (), "linspace"),
        SamplerSpec("langevin", sample_langevin,
                    "predictor-corrector: annealed Langevin corrector + ancestral predictor (Song et al. 2021)",
                    "discrete", False, ("corrector_steps", "snr"), "leading", lambda n: 2 * n),
    ]
}


def get_sampler(name: str) -> SamplerSpec:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


__all__ = ["SAMPLERS", "SamplerSpec", "get_sampler"]
