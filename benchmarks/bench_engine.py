"""Figures 1–3: engine overhead vs a bare forward loop, ddim vs diffusers' DDIM loop, guidance cost.

The studio runs the network channels-last on CPU (studio.core.loading.DiffusersUNetModel). Baselines
that measure the studio's own overhead (bare loop, guidance) use that same network and layout; the
diffusers comparison is made twice: against diffusers' loop as its users run it (NCHW), and against
the same loop on the studio's channels-last network, which isolates the bookkeeping."""
from __future__ import annotations

import copy

import torch
from diffusers import DDIMScheduler, UNet2DModel

from studio.core.loading import ClassifierAdapter, DiffusersUNetModel
from studio.core.model import ModelInfo
from studio.session.recipe import Recipe
from studio.session.runner import Run

from .common import interleaved

SCHED = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000,
         "clip_sample": False, "prediction_type": "epsilon"}


def digits_like_unet() -> UNet2DModel:
    """The shipped digits model if present, else its architecture with random weights (same cost)."""
    from studio.core.loading import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return UNet2DModel.from_pretrained(str(DEFAULT_MODEL_DIR))
    from studio.training.unet_config import UNET_CONFIG

    return UNet2DModel(**UNET_CONFIG)


def large_unet() -> UNet2DModel:
    """A 64×64 UNet2DModel with tens of millions of parameters (random weights)."""
    return UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                       layers_per_block=2, num_class_embeds=11,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def wrap(unet: UNet2DModel, device, classifier=None) -> DiffusersUNetModel:
    ncls = unet.config.num_class_embeds or 0
    info = ModelInfo("bench", unet.config.sample_size, unet.config.in_channels, num_classes=max(ncls - 1, 0),
                     null_label=ncls - 1 if ncls else None, scheduler_config=dict(SCHED),
                     has_classifier=classifier is not None)
    return DiffusersUNetModel(unet, info, classifier, torch.device(device), torch.float32)


def layout_of(unet) -> torch.memory_format:
    """The memory format the network's weights are in (the studio's adapter makes it channels-last on CPU)."""
    w = next(p for p in unet.parameters() if p.dim() == 4)
    return torch.contiguous_format if w.is_contiguous() else torch.channels_last


def bare_loop(unet, batch: int, steps: int, device, label=None):
    """The network's forward passes alone, input in the network's own memory format."""
    s = unet.config.sample_size
    x = torch.randn(batch, unet.config.in_channels, s, s, device=device).contiguous(memory_format=layout_of(unet))
    cl = None if not unet.config.num_class_embeds else torch.full((batch,), label or 0, device=device)
    ts = torch.linspace(999, 0, steps).round()

    def run():
        with torch.no_grad():
            for t in ts:
                unet(x, t.to(device).expand(batch), class_labels=cl).sample
    return run


def studio_loop(model, batch: int, steps: int, sampler="ddim", **recipe_kw):
    recipe = Recipe(model="bench", sampler=sampler, steps=steps, batch=batch, seed=0, **recipe_kw)

    def run():
        r = Run(recipe, model=model)
        for rec in r:  # the trajectory store turns every step into CPU uint8 frames of x_t and x̂₀
            pass
    return run


def diffusers_ddim(unet, batch: int, steps: int, device):
    """diffusers' DDIM scheduler loop as its docs write it; the layout is whatever ``unet``'s weights are in."""
    sched = DDIMScheduler(**{k: v for k, v in SCHED.items() if k != "clip_sample"}, clip_sample=False)
    s = unet.config.sample_size
    x0 = torch.randn(batch, unet.config.in_channels, s, s, device=device).contiguous(memory_format=layout_of(unet))
    cl = None if not unet.config.num_class_embeds else torch.full((batch,), unet.config.num_class_embeds - 1, device=device)

    def run():
        sched.set_timesteps(steps)
        x = x0
        with torch.no_grad():
            for t in sched.timesteps:
                out = unet(x, t.to(device), class_labels=cl).sample
                x = sched.step(out, t, x).prev_sample
    return run


class _TinyClassifier(torch.nn.Module):
    """A noise-aware classifier of the shipped kind's size class, for timing only."""

    def __init__(self, size: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
            torch.nn.SiLU(), torch.nn.Conv2d(64, 64, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.temb = torch.nn.Linear(1, 32)

    def forward(self, x, t):
        h = self.net[0](x) + self.temb(t.view(-1, 1) / 1000).view(-1, 32, 1, 1)
        return self.net[1:](h)


def run(device="cpu", quick=False) -> dict:
    reps = 3 if quick else 7
    steps = 10 if quick else 20
    results = {}
    torch.manual_seed(0)
    for name, make, batch in (("digits 32x32", digits_like_unet, 8), ("large 64x64", large_unet, 2)):
        unet = make().to(device).eval()
        plain = copy.deepcopy(unet)  # NCHW, as a diffusers user runs it
        params = sum(p.numel() for p in unet.parameters())
        model = wrap(unet, device)  # converts ``unet`` in place to the studio's layout (channels-last on CPU)
        r = interleaved(bare_loop(unet, batch, steps, device, label=model.info.null_label),
                        studio_loop(model, batch, steps), reps, device)
        r.update(model=name, params=params, batch=batch, steps=steps)
        results.setdefault("engine_overhead", []).append(r)
        if name.startswith("digits") or not quick:
            n = 50 if not quick else 20
            nets = [("as diffusers runs it", plain)]
            if layout_of(unet) != layout_of(plain):
                nets.append(("same channels-last network", unet))
            for label, net in nets:
                d = interleaved(diffusers_ddim(net, batch, n, device), studio_loop(model, batch, n),
                                reps, device)
                d.update(model=name, batch=batch, steps=n, baseline=label)
                results.setdefault("vs_diffusers_ddim", []).append(d)
        # CFG: a guided step vs one forward at twice the batch
        if model.info.null_label is not None:
            g = interleaved(bare_loop(unet, 2 * batch, steps, device),
                            studio_loop(model, batch, steps, guidance="cfg", scale=3.0, label=1), reps, device)
            g.update(model=name, batch=batch, steps=steps)
            results.setdefault("cfg_step", []).append(g)
        # classifier guidance: a guided step vs forward + classifier forward and backward
        clf_net = _TinyClassifier(unet.config.sample_size).to(device)
        cmodel = wrap(unet, device, ClassifierAdapter(clf_net, device))
        s = unet.config.sample_size

        def fwd_plus_clf(unet=unet, clf_net=clf_net, batch=batch, s=s):
            x = torch.randn(batch, 3, s, s, device=device).contiguous(memory_format=layout_of(unet))
            cl = torch.full((batch,), 1, device=device) if unet.config.num_class_embeds else None
            ts = torch.linspace(999, 0, steps).round()

            def run():
                for t in ts:
                    with torch.no_grad():
                        unet(x, t.to(device).expand(batch), class_labels=cl).sample
                    with torch.enable_grad():
                        xi = x.detach().requires_grad_(True)
                        lp = torch.log_softmax(clf_net(xi, t.to(device).expand(batch)), -1)[:, 1].sum()
                        torch.autograd.grad(lp, xi)
            return run

        c = interleaved(fwd_plus_clf(), studio_loop(cmodel, batch, steps, guidance="classifier", scale=1.0, label=1),
                        reps, device)
        c.update(model=name, batch=batch, steps=steps)
        results.setdefault("classifier_step", []).append(c)
        del unet, plain, model
    return results


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
