"""Figure 7: accuracy per cost on the exact ``gmm`` model.

For each sampler and budget of 10/20/50/100 function evaluations (NFE):
- ``ode_rmse``: median over samples of the RMS distance of each final sample to a fine reference solve of the
  probability-flow ODE from the same x_T (Heun, 1000 steps ≈ 2000 NFE). Meaningful for
  the deterministic samplers; the stochastic ones solve the reverse SDE instead.
  ``flip_frac``: fraction of samples that land in a different component than the reference.
- ``dist_err``: distance of the sample distribution to the exact mixture: L1 error of the
  component weights plus the mean relative error of the per-component pixel spread.
"""
from __future__ import annotations


import numpy as np
import torch

from studio.core.engine import sample
from studio.core.gmm import GaussianMixtureModel

BUDGETS = (10, 20, 50, 100)


def steps_for(sampler: str, nfe: int) -> int:
    """The most steps whose evaluations (as the sampler's registry entry counts them) fit in ``nfe``."""
    from studio.core.samplers import get_sampler

    spec = get_sampler(sampler)
    steps = 1
    while spec.evals(steps + 1) <= nfe:
        steps += 1
    return steps


VARIANTS = [("ddim", "ddim", {}), ("euler", "euler", {}), ("heun", "heun", {}), ("dpmpp_2m", "dpmpp_2m", {}),
            ("euler karras", "euler", {"karras": True}), ("heun karras", "heun", {"karras": True}),
            ("dpmpp_2m karras", "dpmpp_2m", {"karras": True}),
            ("ddpm", "ddpm", {}), ("euler_a", "euler_a", {}), ("langevin", "langevin", {})]
DETERMINISTIC = {"ddim", "euler", "heun", "dpmpp_2m"}


def final(model, sampler, steps, batch, seed, **kw):
    rec = None
    for rec in sample(model, sampler, steps, batch=batch, seed=seed, **kw):
        pass
    return rec.x, rec.nfe


def dist_error(model: GaussianMixtureModel, x: torch.Tensor) -> float:
    comp = model.nearest_component(x)
    k = model.means.shape[0]
    w = torch.bincount(comp, minlength=k).double() / len(comp)
    err = (w - model.weights.cpu()).abs().sum().item()
    spread = []
    for j in range(k):
        xs = x[comp == j].double()
        if len(xs) > 10:
            s = (xs - model.means[j].cpu()).pow(2).mean().sqrt().item()
            spread.append(abs(s / model.stds[j].item() - 1))
    return err + float(np.mean(spread))


def run(quick: bool = False, batch: int = 1000, seed: int = 0) -> dict:
    model = GaussianMixtureModel()
    if quick:
        batch = 200
    ref, _ = final(model, "heun", 200 if quick else 1000, batch, seed)
    ref_comp = model.nearest_component(ref)
    rows = []
    for label, sampler, kw in VARIANTS:
        for nfe in BUDGETS:
            steps = steps_for(sampler, nfe)
            x, used = final(model, sampler, steps, batch, seed, **kw)
            per_sample = (x - ref).pow(2).flatten(1).mean(1).sqrt()
            rmse = per_sample.median().item()
            flips = (model.nearest_component(x) != ref_comp).double().mean().item()
            rows.append({"sampler": label, "deterministic": sampler in DETERMINISTIC, "nfe_budget": nfe,
                         "steps": steps, "nfe": used,
                         "ode_rmse": rmse, "flip_frac": flips, "dist_err": dist_error(model, x)})
    exact = model.sample_exact(batch, torch.Generator().manual_seed(seed))[0]
    return {"rows": rows, "exact_sample_dist_err": dist_error(model, exact), "batch": batch}


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["sampler"] == sampler]
        style = ("-o" if "karras" not in sampler else "-^") if rs[0]["deterministic"] else "--s"
        axes[0].loglog([r["nfe"] for r in rs], [r["ode_rmse"] for r in rs], style, label=sampler)
        axes[1].semilogx([r["nfe"] for r in rs], [r["dist_err"] for r in rs], style, label=sampler)
    axes[0].set(xlabel="function evaluations", ylabel="RMS error vs reference ODE solve", title="Deterministic accuracy")
    axes[1].axhline(result["exact_sample_dist_err"], color="k", lw=0.8, ls=":", label="exact samples")
    axes[1].set(xlabel="function evaluations", ylabel="weight L1 + spread error", title="Distribution error (gmm)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    res = run(quick="--quick" in sys.argv)
    for r in res["rows"]:
        print(f"{r['sampler']:16s} nfe {r['nfe']:4d}  ode_rmse {r['ode_rmse']:.5f} flips {r['flip_frac']:.3f} dist_err {r['dist_err']:.4f}")
    print("exact", res["exact_sample_dist_err"])
