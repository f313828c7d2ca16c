"""One entry point over schedules, plans, denoiser and samplers: ``sample(...)`` yields StepRecords."""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch

from .denoiser import Denoiser
from .guidance import Guidance
from .noise import NoiseSource
from .records import StepRecord
from .samplers import SamplerSpec, get_sampler, samplers_with
from .schedule import NoiseSchedule, Plan, discrete_plan, dpm_plan, sigma_plan


def schedule_for(model, overrides: Optional[dict] = None) -> NoiseSchedule:
    """The model's scheduler config, with any non-None override applied."""
    return NoiseSchedule.from_config(model.info.scheduler_config, **(overrides or {}))


def default_x0_mode(model) -> str:
    sc = model.info.scheduler_config
    if sc.get("thresholding"):
        return "threshold"
    return "clip" if sc.get("clip_sample") else "none"


def make_plan(spec: SamplerSpec, sched: NoiseSchedule, steps: int, spacing: Optional[str] = None,
              karras: bool = False, options: Optional[Mapping[str, Any]] = None) -> Plan:
    """The sampler's timestep plan; ``options`` (its own, checked) matter only to a sampler with a plan of its own
    (lcm), which takes no spacing."""
    spacing = spacing or spec.default_spacing
    if karras and not spec.takes_karras:
        raise ValueError(f"Karras sigmas apply to the samplers on σ plans ({', '.join(samplers_with('takes_karras'))}), "
                         f"not {spec.name}; leave Karras off or choose one of those")
    if spec.own_plan is not None:
        return spec.own_plan(sched, steps, spec.resolve(options))
    if spec.plan_kind == "discrete":
        return discrete_plan(sched, steps, spacing)
    sched = sched.finite_terminal()
    if spec.plan_kind == "sigma":
        return sigma_plan(sched, steps, spacing, karras)
    return dpm_plan(sched, steps, spacing, karras)


def model_plan(model, spec: SamplerSpec, steps: int, spacing: Optional[str] = None, karras: Optional[bool] = None,
               schedule_overrides: Optional[dict] = None, options: Optional[Mapping[str, Any]] = None) -> Plan:
    """The plan for a model: unset spacing / Karras come from its scheduler config, then the sampler's default."""
    sc = model.info.scheduler_config
    spacing = spacing or sc.get("timestep_spacing") or spec.default_spacing
    if karras is None:
        karras = bool(sc.get("use_karras_sigmas", False)) and spec.takes_karras
    return make_plan(spec, schedule_for(model, schedule_overrides), steps, spacing, karras, options)


def branch_plan(spec: SamplerSpec, sched: NoiseSchedule, t_start: float, steps: int) -> Plan:
    """A plan that starts at timestep ``t_start`` (a branch point) and ends at 0, evenly spaced in t."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps left must be a positive integer, got {steps!r}")
    all_sigmas = sched.sigmas
    if spec.plan_kind == "discrete":
        ts = np.unique(np.linspace(t_start, 0, steps).round().astype(np.int64))[::-1].copy()
        if len(ts) < steps:
            raise ValueError(f"only {len(ts)} distinct timesteps remain below t={t_start:g}; use at most {len(ts)} steps")
        ab = np.array([sched.alpha_bar(int(t)) for t in ts] + [sched.final_alpha_cumprod], dtype=np.float64)
        ts = ts.astype(np.float64)
        ts[0] = t_start  # start exactly where the parent stopped, even at a fractional t
        ab[0] = 1.0 / (1.0 + float(sched.sigma_at(t_start)) ** 2)
        return Plan(ts, np.sqrt((1 - ab) / ab), ab, "branch")
    ts = np.linspace(t_start, 0, steps)
    sig = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    sig = np.concatenate([sig, [0.0]]).astype(np.float32)
    s = sig.astype(np.float64)
    return Plan(ts, sig, 1.0 / (1.0 + s * s), "branch")


def labels_tensor(model, label: Optional[int], batch: int, device) -> Optional[torch.Tensor]:
    info = model.info
    if label is None:
        return None
    if not info.conditional:
        raise ValueError(f"model {info.name!r} is unconditional and takes no label; leave --label out")
    if not isinstance(label, (int, np.integer)) or not (0 <= label < info.num_classes):
        names = f" ({', '.join(info.class_names)})" if info.class_names else ""
        raise ValueError(f"label {label!r} is out of range; model {info.name!r} has classes 0..{info.num_classes - 1}{names}")
    return torch.full((batch,), int(label), device=device, dtype=torch.long)


def image_size(model, size: Optional[tuple[int, int]] = None) -> tuple[int, int]:
    """(height, width) in pixels: ``size``, or the model's own resolution."""
    info = model.info
    if size is None:
        return info.image_size, info.image_size
    f = info.vae_scale_factor
    h, w = size
    for name, v in (("height", h), ("width", w)):
        if not isinstance(v, int) or isinstance(v, bool) or v < f or v % f or v > 8192:
            raise ValueError(f"{name} {v!r} is not possible; use a multiple of {f} from {f} to 8192"
                             + (" (the VAE's scale factor)" if f > 1 else ""))
    if not info.text_conditioned and (h, w) != (info.image_size, info.image_size):
        raise ValueError(f"model {info.name!r} makes {info.image_size}x{info.image_size} images only; "
                         "leave width and height out")
    return h, w


def latent_shape(model, batch: int, size: Optional[tuple[int, int]] = None) -> tuple[int, int, int, int]:
    """The shape of the chain's state: images, or latents for a latent model (pixels / scale factor)."""
    h, w = image_size(model, size)
    f = model.info.vae_scale_factor
    return batch, model.info.in_channels, h // f, w // f


def conditioning(model, label, batch: int, guidance: Guidance, prompt: Optional[str], negative_prompt: Optional[str],
                 size: Optional[tuple[int, int]] = None):
    """(cond, uncond) for the denoiser: labels and the null label, or the prompt's and the negative
    prompt's text embeddings (computed once per text by the model and kept)."""
    info = model.info
    if not info.text_conditioned:
        if prompt or negative_prompt:
            raise ValueError(f"model {info.name!r} is not text-conditioned and takes no prompt; use --label")
        return labels_tensor(model, label, batch, model.device), None
    if label is not None:
        raise ValueError(f"model {info.name!r} is text-conditioned and takes no class label; use --prompt")
    if guidance.mode == "classifier":
        raise ValueError(f"model {info.name!r} has no noise-aware classifier for its latents, so classifier "
                         "guidance is not possible; use --guidance cfg with a prompt")
    for name, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"the {name} must be text, got {text!r}")
    h, w = image_size(model, size)
    cond, uncond, _ = model.conditions(prompt or "", negative_prompt, batch, h, w)
    return cond, uncond


def sample(
    model,
    sampler: str,
    steps: int,
    *,
    options: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    batch: int = 1,
    label: Optional[int] = None,
    guidance: Guidance = Guidance(),
    prompt: Optional[str] = None,
    negative_prompt: Optional[str] = None,
    size: Optional[tuple[int, int]] = None,
    guidance_rescale: float = 0.0,
    spacing: Optional[str] = None,
    karras: Optional[bool] = None,
    x0_mode: Optional[str] = None,
    eps_from_x0: bool = True,
    schedule_overrides: Optional[dict] = None,
    init_noise: Optional[torch.Tensor] = None,
    start: Optional[StepRecord] = None,
    plan: Optional[Plan] = None,
) -> Iterator[StepRecord]:
    """Run a reverse chain, yielding one record per step.

    ``options`` are the sampler's own settings by name (``{"eta": 0.5}``); the ones left out take the
    defaults its registry entry declares, and a name it does not declare or a value outside the declared
    range is refused here, before anything runs (``OptionError``, one line).
    ``start`` continues a run exactly after that record (same plan, its carry).
    ``init_noise`` is the state at the plan's first point: x_T, or a branch's VP state
    with a ``plan`` that starts there (``branch_plan``).
    """
    spec = get_sampler(sampler)
    opts = spec.resolve(options)
    sched = schedule_for(model, schedule_overrides)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    device = model.device
    noise = NoiseSource(seed, device, torch.float32)
    plan = plan or model_plan(model, spec, steps, spacing, karras, schedule_overrides, opts)
    info = model.info
    shape = latent_shape(model, batch, size)
    sc = info.scheduler_config
    cond, uncond = conditioning(model, label, batch, guidance, prompt, negative_prompt, size)
    den = Denoiser(model, cond, guidance,
                   x0_mode or default_x0_mode(model),
                   clip_range=float(sc.get("clip_sample_range", 1.0)),
                   threshold_ratio=float(sc.get("dynamic_thresholding_ratio", 0.995)),
                   threshold_max=float(sc.get("sample_max_value", 1.0)),
                   eps_from_x0=eps_from_x0, uncond=uncond, guidance_rescale=guidance_rescale)
    if guidance.mode == "classifier" and guidance.classifier_form == "mean" and not spec.classifier_mean_shift:
        raise ValueError(f"the mean-shift form of classifier guidance exists only for "
                         f"{', '.join(samplers_with('classifier_mean_shift'))}, not {spec.name}; use the eps form")
    if spec.schedule_inputs is not None:
        opts.update(spec.schedule_inputs(sched))
    if start is not None:
        den.nfe = start.nfe  # the denoiser counts evaluations (NFE); a continued run continues the count
        return spec.fn(den, start.x, plan, noise, start=start.index + 1, carry=dict(start.carry), **opts)
    if init_noise is not None:
        if tuple(init_noise.shape) != shape:
            raise ValueError(f"initial noise has shape {tuple(init_noise.shape)} but the run needs {shape}")
        x = init_noise.to(device, torch.float32)
    else:
        x = noise.initial(shape)
    return spec.fn(den, x, plan, noise, **opts)
