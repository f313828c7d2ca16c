"""Classifier guidance and classifier-free guidance on the exact mixture, against closed forms.

On ``gmm`` p(y | x_t) = r_y(x_t) exactly, so every guided ε can be computed independently here:
  component score   ∇log p_t(x|y) = (a μ_y − x)/v_y,  v_k = a² s_k² + b²
  classifier grad   ∇log r_y = (a μ_y − x)/v_y − Σ_k r_k (a μ_k − x)/v_k
"""
from __future__ import annotations

import math

import pytest
import torch

from _models import final_x
from studio.core import engine
from studio.core.denoiser import Denoiser
from studio.core.guidance import Guidance, GuidanceError

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _closed_form(gmm, x, abar):
    """(r_k, per-component scores (aμ_k − x)/v_k) for x of shape (B, C, H, W), in float64, written out here."""
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    mu = gmm.means.double()
    s2 = gmm.stds.double() ** 2
    v = a * a * s2 + b * b  # (K,)
    xf = x.double().unsqueeze(1)  # (B, 1, C, H, W)
    diff = a * mu.unsqueeze(0) - xf  # (B, K, C, H, W)
    D = x[0].numel()
    logp = torch.log(gmm.weights.double()) - diff.pow(2).flatten(2).sum(-1) / (2 * v) - 0.5 * D * torch.log(2 * math.pi * v)
    r = torch.softmax(logp, dim=1)  # (B, K)
    comp_scores = diff / v.view(1, -1, 1, 1, 1)
    return r, comp_scores, a, b, torch.log_softmax(logp, dim=1)


def _points(gmm, abar, seed=0, batch=4):
    """States x_t drawn from the forward process (so responsibilities are mixed, not all 0/1)."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = gmm.sample_exact(batch, g, labels=torch.arange(batch) % 4)
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    return (a * x0 + b * torch.randn(x0.shape, generator=g)).float()


ABARS = [0.9, 0.3, 0.02]  # low, middle and high noise (r_k mixed at the noisier ones)


@pytest.mark.parametrize("abar", ABARS)
@pytest.mark.parametrize("w", [1.0, 3.0, 7.5])
def test_cfg_eps_is_uncond_plus_w_times_difference(gmm, abar, w):
    x = _points(gmm, abar)
    labels = torch.tensor([0, 1, 2, 3])
    r, comp, a, b, _ = _closed_form(gmm, x, abar)
    eps_u = -b * (r.view(*r.shape, 1, 1, 1) * comp).sum(1)
    eps_c = -b * comp[torch.arange(4), labels]
    # the same through the model's own score, conditional and unconditional
    sigma = b / a
    torch.testing.assert_close(eps_u, -b * gmm.score(x, sigma), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_c, -b * gmm.score(x, sigma, labels), rtol=1e-9, atol=1e-9)
    den = Denoiser(gmm, labels, Guidance("cfg", w))
    pred = den(x, t=500.0, alpha_bar=abar, fraction=0.0)
    want = eps_u + w * (eps_c - eps_u)
    torch.testing.assert_close(pred.eps.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.x0.double(), (x.double() - b * want) / a, rtol=1e-4, atol=1e-4)
    assert pred.guided and den.nfe == 1


@pytest.mark.parametrize("abar", ABARS)
@pytest.mark.parametrize("s", [0.5, 2.0])
def test_classifier_eps_is_eps_minus_s_b_grad_log_ry(gmm, abar, s):
    x = _points(gmm, abar, seed=1)
    labels = torch.tensor([3, 2, 1, 0])
    r, comp, a, b, _ = _closed_form(gmm, x, abar)
    idx = torch.arange(4)
    grad = comp[idx, labels] - (r.view(*r.shape, 1, 1, 1) * comp).sum(1)  # ∇ log r_y
    # the closed form agrees with a central finite difference of log r_y along a random direction
    d = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    h = 1e-4
    xp, xm = x.double() + h * d, x.double() - h * d
    lr = lambda z: _closed_form(gmm, z, abar)[4][idx, labels]  # log r_y  # noqa: E731
    fd = (lr(xp) - lr(xm)) / (2 * h)
    torch.testing.assert_close(fd, (grad * d).flatten(1).sum(1), rtol=1e-4, atol=1e-4)
    # the denoiser: the model's unconditional ε (null label: classifier guidance samples p(x) p(y|x)^s),
    # minus s·b·∇log r_y from the exact classifier by autograd
    eps_model = -b * (r.view(*r.shape, 1, 1, 1) * comp).sum(1)
    pred = Denoiser(gmm, labels, Guidance("classifier", s))(x, t=500.0, alpha_bar=abar, fraction=0.0)
    torch.testing.assert_close(pred.eps.double(), eps_model - s * b * grad, rtol=1e-4, atol=1e-4)
    assert pred.guided and pred.grad is None  # ε form: nothing left for a mean shift
    # mean form: ε untouched, the gradient handed to the sampler
    pm = Denoiser(gmm, labels, Guidance("classifier", s, classifier_form="mean"))(x, 500.0, abar, 0.0)
    torch.testing.assert_close(pm.eps.double(), eps_model, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pm.grad.double(), grad, rtol=1e-4, atol=1e-4)
    assert pm.scale == s


def test_exact_classifier_guidance_scale_s_equals_cfg_scale_s(gmm):
    """With the exact classifier, ε_c − ε_u = −b ∇log p(y|x_t), so classifier guidance of the unconditional
    model at scale s and CFG at w = s are the same chain; s = 1 is exact conditional sampling."""
    for w in (1.0, 2.0, 5.0):
        a = final_x(gmm, "ddim", 10, batch=8, seed=3, label=1, guidance=Guidance("cfg", w))
        b = final_x(gmm, "ddim", 10, batch=8, seed=3, label=1, guidance=Guidance("classifier", w))
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4)


# -- sampling with guidance -------------------------------------------------------------
B = 100


@pytest.mark.parametrize(
    "sampler,guidance",
    [
        ("ddim", Guidance("cfg", 3.0)),
        ("dpmpp_2m", Guidance("classifier", 2.0)),
        ("euler_a", Guidance("cfg", 5.0)),
        ("ddpm", Guidance("classifier", 2.0, classifier_form="mean")),
    ],
    ids=["cfg-ddim", "classifier-dpmpp", "cfg-euler_a", "classifier-mean-ddpm"],
)
def test_guided_samples_land_in_component_y(gmm, sampler, guidance):
    for y in (0, 2, 3):
        x = final_x(gmm, sampler, 20, batch=B, seed=y, label=y, guidance=guidance)
        frac = (gmm.nearest_component(x) == y).double().mean().item()
        assert frac >= 0.99, (y, frac)


def test_unguided_unconditional_run_is_not_all_one_component(gmm):
    """Control for the test above: the same noise without a label spreads over the components."""
    comp = gmm.nearest_component(final_x(gmm, "ddim", 20, batch=B, seed=0))
    assert (comp == 3).double().mean() < 0.3 and len(comp.unique()) == 4


def _mid_chain_ry(gmm, label, guidance, step=5):
    """Mean p(y | x_t) (exact, unconditional mixture) of the states after ``step`` of a 20-step DDIM run."""
    for rec in engine.sample(gmm, "ddim", 20, batch=B, seed=7, label=label, guidance=guidance):
        if rec.index == step:
            return gmm.responsibilities(rec.x, rec.sigma_next)[:, label].mean().item()


@pytest.mark.parametrize("label", [0, 3])
def test_stronger_guidance_concentrates_on_class(gmm, label):
    """Raising w pushes the chain towards class y while it is still noisy: p(y | x_t) at step 6 of 20 rises
    strictly with w (measured for y = 3: .65, .98, .9998, 1.0). On an exact mixture the guidance term
    ∇log p(y|x_t) vanishes once r_y ≈ 1, so the *final* within-component spread does not shrink with w
    (measured 0.0556 → 0.0555), which is why the check is made mid-chain."""
    rs = [_mid_chain_ry(gmm, label, Guidance("cfg", w)) for w in (1.0, 2.0, 4.0, 8.0)]
    assert all(r1 < r2 for r1, r2 in zip(rs, rs[1:])), rs
    assert rs[-1] > 0.99 and rs[0] < 0.9, rs
    rc = [_mid_chain_ry(gmm, label, Guidance("classifier", s)) for s in (0.0, 3.0)]
    assert rc[0] < rc[1], rc


def test_plain_conditional_sampling_of_rarest_class_is_exact(gmm):
    """For one Gaussian component N(μ, s²I) the probability-flow ODE keeps z = (x_t − a μ)/√(a²s² + b²)
    constant, so the exact sample from x_T is μ + s z_T. Label 3 (π = 0.1), no guidance, a fine
    deterministic solve from the same noise reproduces it (residual: the last jump from σ_min = 0.01)."""
    y = 3
    x_T = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    x = final_x(gmm, "dpmpp_2m", 100, batch=8, label=y, init_noise=x_T, karras=True).double()
    plan = engine.make_plan(engine.get_sampler("dpmpp_2m"), engine.schedule_for(gmm), 100, None, True)
    sig = float(plan.sigmas[0])
    a, b = 1 / math.sqrt(1 + sig * sig), sig / math.sqrt(1 + sig * sig)
    mu, s = gmm.means[y].double(), float(gmm.stds[y])
    want = mu + s * (x_T.double() - a * mu) / math.sqrt(a * a * s * s + b * b)
    err = (x - want).abs().max().item()
    assert err < 5e-3, err
    # guidance with w = 1 is the same run (one conditional forward, no difference term)
    x1 = final_x(gmm, "dpmpp_2m", 100, batch=8, label=y, init_noise=x_T, karras=True, guidance=Guidance("cfg", 1.0))
    assert torch.equal(x1.double(), x)


# -- guidance interval --------------------------------------------------------------
@pytest.mark.parametrize("mode,scale", [("cfg", 4.0), ("classifier", 3.0)])
def test_guidance_interval(gmm, mode, scale):
    n = 10  # step i starts at fraction i/10 = 0, .1, …, .9
    kw = dict(batch=6, seed=2, label=1)
    # outside its interval CFG is plain conditional sampling (w = 1) and classifier guidance is the
    # unconditional model (s = 0)
    plain = list(engine.sample(gmm, "ddim", n, **(kw if mode == "cfg" else {**kw, "label": None})))
    # an interval after every step's start: no step guided, identical to the unguided run
    none = list(engine.sample(gmm, "ddim", n, guidance=Guidance(mode, scale, (0.95, 1.0)), **kw))
    assert not any(r.guided for r in none)
    assert torch.equal(none[-1].x, plain[-1].x)
    # [0.3, 0.6): steps 3, 4, 5 only
    part = list(engine.sample(gmm, "ddim", n, guidance=Guidance(mode, scale, (0.3, 0.6)), **kw))
    assert [r.guided for r in part] == [3 <= i < 6 for i in range(n)]
    for i in range(3):  # identical before the interval …
        assert torch.equal(part[i].x, plain[i].x)
    assert (part[3].x - plain[3].x).abs().max() > 1e-4  # … and guided inside it
    full = final_x(gmm, "ddim", n, guidance=Guidance(mode, scale), **kw)
    assert (part[-1].x - full).abs().max() > 1e-4


def test_unconditional_cfg_interval_equals_unconditional_when_label_null(gmm):
    """Feeding the null label is the unconditional model: same chain as no label at all."""
    a = final_x(gmm, "ddim", 8, batch=4, seed=1)
    b = final_x(gmm, "ddim", 8, batch=4, seed=1, label=None, guidance=Guidance("none"))
    assert torch.equal(a, b)
    xs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    null = torch.full((4,), gmm.info.null_label)
    torch.testing.assert_close(gmm.predict(xs, None, null, 1.3), gmm.predict(xs, None, None, 1.3))


# -- refusals ---------------------------------------------------------------------
def test_mean_form_only_for_ddpm(gmm):
    with pytest.raises(ValueError, match="ddpm"):
        engine.sample(gmm, "ddim", 5, label=0, guidance=Guidance("classifier", 1.0, classifier_form="mean"))


@pytest.mark.parametrize("g", [
    Guidance("cfg", float("nan")), Guidance("cfg", float("inf")), Guidance("cfg", -1.0),
    Guidance("classifier", float("-inf")), Guidance("cfg", 3.0, (0.5, 0.5)), Guidance("cfg", 3.0, (-0.1, 1.0)),
    Guidance("cfg", 3.0, (0.0, float("nan"))), Guidance("magic", 3.0), Guidance("classifier", 1.0, classifier_form="x"),
])
def test_bad_guidance_refused_before_any_step(gmm, g):
    with pytest.raises(GuidanceError):
        g.validate()
    calls = []
    orig = gmm.predict
    gmm.predict = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        with pytest.raises(GuidanceError):
            engine.sample(gmm, "ddim", 5, label=0, guidance=g)  # raised by the call, not on the first step
    finally:
        del gmm.predict
    assert not calls


def test_guidance_needs_a_label(gmm):
    with pytest.raises(ValueError, match="label"):
        engine.sample(gmm, "ddim", 5, guidance=Guidance("cfg", 3.0))


def test_ddpm_mean_form_shifts_the_posterior_mean_by_s_var_grad(gmm):
    """Dhariwal & Nichol Alg. 1: x_{t−1} ~ N(μ + s Σ ∇log p(y|x_t), Σ). With the same step noise, the guided and
    unguided first steps differ by exactly s·β̃·∇log r_y(x_T), β̃ = (1−ᾱ_{t'})/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_{t'})."""
    s, y = 2.5, 2
    x_T = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    kw = dict(batch=4, seed=4, label=y, init_noise=x_T)
    guided = next(engine.sample(gmm, "ddpm", 20, guidance=Guidance("classifier", s, classifier_form="mean"), **kw))
    plain = next(engine.sample(gmm, "ddpm", 20, **{**kw, "label": None}))  # the unconditional base
    ab, ab_prev = guided.alpha_bar, guided.alpha_bar_next
    var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    r, comp, *_ = _closed_form(gmm, x_T, ab)
    grad = comp[:, y] - (r.view(*r.shape, 1, 1, 1) * comp).sum(1)
    torch.testing.assert_close((guided.x - plain.x).double(), s * var * grad, rtol=1e-4, atol=1e-5)
    assert (guided.x - plain.x).abs().max() > 1e-3
