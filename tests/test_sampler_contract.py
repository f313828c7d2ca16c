"""The contract every registered sampler keeps, checked on the exact ``gmm`` model: a sampler is tested the
moment it is registered, with what its registry entry declares (options, evaluations per step, determinism).

For each sampler, with its default options and with a non-default value of every option it declares:
records of the right shapes and plan points, one per step; NFE after each step equal to the sum of the
registry's ``step_evals``; continuing from any step's record gives exactly the rest of the straight run;
same seed → same samples (sample j the same whatever the batch size), and a different seed with the same
x_T → the same samples exactly when the registry says the sampler is deterministic with those options. Values outside an option's declaration, and
options the sampler does not declare, are refused before a step runs.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re

import numpy as np
import pytest
import torch

from studio.core import engine
from studio.core.options import Option, OptionError
from studio.core.guidance import Guidance
from studio.core.samplers import SAMPLERS, OPTION_SCHEMA, samplers_with
from studio.session.recipe import Recipe

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS, BATCH, SEED = 6, 2, 11


def other_value(opt: Option):
    """A value the declaration allows that is not the default (to run each option off its default)."""
    if opt.kind == "choice":
        return next(c for c in opt.choices if c != opt.default)
    if opt.kind == "int":
        return min(opt.default + 2, int(opt.high)) if opt.high is not None else opt.default + 2
    lo = opt.low if opt.low is not None else 0.0
    hi = opt.high if opt.high is not None else lo + 1.0
    v = (lo + hi) / 2
    return v if v != opt.default else hi


def refused_values(opt: Option) -> list:
    """Values the declaration does not allow: the wrong type, outside the range, not a choice."""
    bad: list = ["1", True, [opt.default], math.nan] if opt.kind in ("float", "int") else [3, True, "no-such-choice"]
    if opt.kind in ("float", "int"):
        if opt.low is not None:
            bad.append(opt.low if opt.low_open else opt.low - 1)
        if opt.high is not None:
            bad.append(opt.high if opt.high_open else opt.high + 1)
        if opt.kind == "int":
            bad.append(opt.default + 0.5)
    return bad


CASES = [(name, {}) for name in SAMPLERS] + [
    (name, {opt.name: other_value(opt)}) for name, spec in SAMPLERS.items() for opt in spec.options.values()]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in CASES]


@pytest.fixture(scope="module")
def straight_runs(gmm):
    """One straight run per case (its plan and every record), made on first use."""
    runs = {}

    def get(name, options):
        key = (name, tuple(sorted(options.items())))
        if key not in runs:
            plan = engine.model_plan(gmm, SAMPLERS[name], STEPS, options=options)
            recs = list(engine.sample(gmm, name, STEPS, options=options, batch=BATCH, seed=SEED, plan=plan))
            runs[key] = plan, recs
        return runs[key]

    return get


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_records_one_per_step_with_shapes_and_plan_points(gmm, straight_runs, name, options):
    plan, recs = straight_runs(name, options)
    assert [r.index for r in recs] == list(range(STEPS)) and all(r.steps == STEPS for r in recs)
    shape = (BATCH, gmm.info.in_channels, gmm.info.sample_size, gmm.info.sample_size)
    for i, r in enumerate(recs):
        assert r.sampler == name
        assert tuple(r.x.shape) == tuple(r.x0.shape) == shape and r.x.dtype == r.x0.dtype == torch.float32
        assert torch.isfinite(r.x).all() and torch.isfinite(r.x0).all()
        assert r.t == pytest.approx(float(plan.timesteps[i])) and r.sigma == pytest.approx(float(plan.sigmas[i]))
        assert r.sigma_next == pytest.approx(float(plan.sigmas[i + 1]))
        if i + 1 < STEPS:
            assert r.t_next == recs[i + 1].t and r.t_next < r.t
    assert recs[-1].t_next == -1.0 and recs[-1].alpha_bar_next == pytest.approx(1.0)  # the chain ends at ᾱ = 1


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_nfe_after_each_step_is_what_the_registry_declares(straight_runs, name, options):
    spec = SAMPLERS[name]
    resolved = spec.resolve(options)
    plan, recs = straight_runs(name, options)
    expected = 0
    for i, r in enumerate(recs):
        expected += spec.step_evals(i, STEPS, resolved, plan)
        assert r.nfe == expected, f"nfe after step {i}"
    assert spec.evals(STEPS, options, plan) == recs[-1].nfe


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_continuing_from_every_step_gives_the_rest_of_the_straight_run(gmm, straight_runs, name, options):
    plan, recs = straight_runs(name, options)
    for k in range(STEPS - 1):
        rest = list(engine.sample(gmm, name, STEPS, options=options, batch=BATCH, seed=SEED, plan=plan,
                                  start=recs[k]))
        assert [r.index for r in rest] == list(range(k + 1, STEPS))
        for got, want in zip(rest, recs[k + 1:]):
            assert torch.equal(got.x, want.x) and torch.equal(got.x0, want.x0), (k, got.index)
            assert got.nfe == want.nfe


@pytest.mark.parametrize("name,options", CASES, ids=IDS)
def test_seeds_and_determinism_as_the_registry_declares(gmm, straight_runs, name, options):
    """Same seed: the same samples. Given the same x_T, another seed changes the samples exactly when the
    sampler draws fresh noise with these options (``SamplerSpec.is_deterministic``)."""
    _, recs = straight_runs(name, options)
    x_T = torch.randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def final(seed, batch=BATCH, **kw):
        *_, last = engine.sample(gmm, name, STEPS, options=options, batch=batch, seed=seed, **kw)
        return last.x

    assert torch.equal(final(SEED), recs[-1].x)
    assert torch.equal(final(SEED, batch=1), recs[-1].x[:1])  # noise is keyed per sample, whatever the batch
    a, b = final(1, init_noise=x_T), final(2, init_noise=x_T)
    if SAMPLERS[name].is_deterministic(options):
        assert torch.equal(a, b)
    else:
        assert (a - b).flatten(1).abs().max(1).values.min() > 1e-2  # every sample changes


def test_the_deterministic_group_comes_from_the_registry():
    """η = 0 makes DDIM and ancestral Euler deterministic (documented: η = 0 means no fresh noise)."""
    deterministic = {n for n, s in SAMPLERS.items() if s.is_deterministic()}
    assert deterministic == {n for n, s in SAMPLERS.items() if s.deterministic}
    assert SAMPLERS["euler_a"].is_deterministic({"eta": 0.0}) and not SAMPLERS["euler_a"].is_deterministic()
    assert not SAMPLERS["ddim"].is_deterministic({"eta": 0.5}) and SAMPLERS["ddim"].is_deterministic()


@pytest.mark.parametrize("name,option,value", [
    (name, opt.name, v) for name, spec in SAMPLERS.items() for opt in spec.options.values() for v in refused_values(opt)])
def test_values_outside_a_declaration_are_refused_before_anything_runs(gmm, name, option, value):
    with pytest.raises(OptionError) as e:
        engine.sample(gmm, name, STEPS, options={option: value})  # the call refuses, not the first step
    msg = str(e.value)
    assert option in msg and "\n" not in msg


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_options_the_sampler_does_not_declare_are_refused(gmm, name):
    spec = SAMPLERS[name]
    foreign = next((o for o in OPTION_SCHEMA if o not in spec.options), "no_such_option")
    with pytest.raises(OptionError, match=f"sampler {name} has no option '{foreign}'"):
        engine.sample(gmm, name, STEPS, options={foreign: 1})


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_declarations_are_the_only_defaults(name):
    """Each declared option is a keyword of the sampler function with no default of its own (the registry's
    is the one source), and shared option names agree on kind and range (one recipe field, one widget)."""
    spec = SAMPLERS[name]
    params = inspect.signature(spec.fn).parameters
    for opt_name, opt in spec.options.items():
        assert opt_name in params and params[opt_name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[opt_name].default is inspect.Parameter.empty, f"{name}.{opt_name} has its own default"
        assert opt.check(opt.default) == opt.default and opt.help
        shared = OPTION_SCHEMA[opt_name]
        assert (shared.kind, shared.low, shared.high, shared.choices) == (opt.kind, opt.low, opt.high, opt.choices)


def test_euler_a_eta_zero_means_no_noise_and_is_plain_euler(gmm):
    """η = 0 is honoured (it used to be turned into 1): ancestral Euler with η = 0 is Euler's method, and its
    default η = 1 is the ancestral step."""
    kw = dict(batch=BATCH, seed=SEED)
    *_, euler = engine.sample(gmm, "euler", STEPS, **kw)
    *_, a0 = engine.sample(gmm, "euler_a", STEPS, options={"eta": 0.0}, **kw)
    *_, a_default = engine.sample(gmm, "euler_a", STEPS, **kw)
    *_, a1 = engine.sample(gmm, "euler_a", STEPS, options={"eta": 1.0}, **kw)
    assert torch.equal(a0.x, euler.x)
    assert torch.equal(a_default.x, a1.x) and (a1.x - euler.x).abs().max() > 1e-2


def listed(message: str) -> list[str]:
    """The sampler names a refusal lists: "… (a, b), not c …" or "… only for a, b, not c …" → [a, b]."""
    m = re.search(r"\(([^)]*)\), not |only for (.*?), not ", message)
    return [n.strip() for n in (m.group(1) or m.group(2)).split(",")]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_karras_sigmas_are_taken_exactly_by_the_samplers_declaring_it(gmm, name):
    """A sampler on a σ plan takes Karras spacing (its noise levels change); one on integer timesteps refuses it
    with a line listing the samplers that take it, as the recipe's help does: both read the flag."""
    spec = SAMPLERS[name]
    takers = samplers_with("takes_karras")
    assert takers == tuple(n for n, s in SAMPLERS.items() if s.plan_kind in ("sigma", "dpm"))
    assert f"for {', '.join(takers)} " in Recipe.schema()["karras"].help
    sched = engine.schedule_for(gmm)
    if spec.takes_karras:
        plain, karras = engine.make_plan(spec, sched, STEPS), engine.make_plan(spec, sched, STEPS, karras=True)
        assert karras.karras and not np.allclose(plain.sigmas, karras.sigmas)
    else:
        with pytest.raises(ValueError) as e:
            engine.make_plan(spec, sched, STEPS, karras=True)
        assert listed(str(e.value)) == list(takers) and name in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_the_mean_form_of_classifier_guidance_is_run_exactly_by_the_samplers_declaring_it(gmm, name):
    """Dhariwal & Nichol's mean shift needs the step's posterior variance: the samplers flagged
    ``classifier_mean_shift`` run it (it changes the samples); the others refuse it in one line that lists
    the flagged ones, as the recipe's help for classifier_form does."""
    takers = samplers_with("classifier_mean_shift")
    assert f"mean ({', '.join(takers)})" in Recipe.schema()["classifier_form"].help
    mean = Guidance("classifier", 4.0, classifier_form="mean")
    kw = dict(batch=BATCH, seed=SEED, label=1)
    if SAMPLERS[name].classifier_mean_shift:
        *_, guided = engine.sample(gmm, name, STEPS, guidance=mean, **kw)
        *_, free = engine.sample(gmm, name, STEPS, **kw)
        assert guided.guided and not torch.equal(guided.x, free.x)
    else:
        with pytest.raises(ValueError) as e:
            engine.sample(gmm, name, STEPS, guidance=mean, **kw)
        assert listed(str(e.value)) == list(takers) and "\n" not in str(e.value)


def test_refusals_follow_the_flags_of_a_newly_registered_sampler(gmm, monkeypatch):
    """The names come from the registry's flags, not from a list: a new sampler declaring the mean shift is
    named by the refusal at once."""
    monkeypatch.setitem(SAMPLERS, "ddpm_twin", dataclasses.replace(SAMPLERS["ddpm"], name="ddpm_twin"))
    with pytest.raises(ValueError) as e:
        engine.sample(gmm, "ddim", STEPS, guidance=Guidance("classifier", 1.0, classifier_form="mean"), label=1)
    assert listed(str(e.value)) == ["ddpm", "ddpm_twin"]
