"""Branching a run from any step (``Run(recipe, parent=traj, from_step=k)``) and replaying it (``execute``)."""
from __future__ import annotations

import json

import pytest
import torch

from studio.session.recipe import Recipe, RecipeError
from studio.session.runner import ModelCache, Run, execute

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS = 8
K = 3  # branch after step K (0-based): the branch redoes steps K+1 … STEPS−1


def _recipe(sampler, **kw):
    return Recipe(model="gmm", sampler=sampler, steps=STEPS, batch=3, seed=21, device="cpu", **kw)


def _run(gmm, recipe, **kw):
    return Run(recipe, model=gmm, **kw).run_to_end()


@pytest.mark.parametrize(
    "sampler,extra",
    [("ddim", {}), ("euler", {}), ("heun", {}), ("dpmpp_2m", {}), ("dpmpp_2m", {"karras": True}),
     ("ddpm", {}), ("euler_a", {}), ("langevin", {}), ("ddim", {"eta": 0.5})],
    ids=["ddim", "euler", "heun", "dpmpp_2m", "dpmpp_2m-karras", "ddpm", "euler_a", "langevin", "ddim-eta0.5"],
)
def test_same_settings_branch_reproduces_the_rest_exactly(gmm, sampler, extra):
    """Deterministic samplers resume from the stored state (and multistep memory); stochastic ones also
    redraw exactly the same noise, because noise is keyed by (seed, sample, step)."""
    r = _recipe(sampler, **extra)
    parent = _run(gmm, r)
    assert len(parent) == STEPS and parent.finished
    run = Run(r, model=gmm, parent=parent, from_step=K)
    assert run.total_steps == STEPS - K - 1
    branch = run.run_to_end()
    assert len(branch) == STEPS - K - 1
    for j in range(len(branch)):
        assert branch.meta[j].index == K + 1 + j
        assert branch.meta[j].t == parent.meta[K + 1 + j].t
        assert torch.equal(branch.full_state(j)["x"], parent.full_state(K + 1 + j)["x"]), f"step {K + 1 + j}"
        assert torch.equal(branch.full_state(j)["x0"], parent.full_state(K + 1 + j)["x0"])
    assert torch.equal(branch.final(), parent.final())


def test_branch_from_initial_noise_reproduces_the_run(gmm):
    r = _recipe("euler_a")
    parent = _run(gmm, r)
    branch = _run(gmm, r, parent=parent, from_step=-1)
    assert len(branch) == STEPS and torch.equal(branch.final(), parent.final())


@pytest.mark.parametrize("parent_sampler,branch_sampler,steps",
                         [("ddim", "euler", 5), ("dpmpp_2m", "ddim", 6), ("euler", "ddpm", 4), ("ddpm", "heun", 5)])
def test_changed_sampler_branch(gmm, parent_sampler, branch_sampler, steps):
    parent = _run(gmm, _recipe(parent_sampler))
    run = Run(_recipe(branch_sampler).replace(steps=steps), model=gmm, parent=parent, from_step=K)
    branch = run.run_to_end()
    assert len(branch) == steps == run.total_steps
    assert branch.meta[0].t == pytest.approx(parent.meta[K].t_next)  # starts where the parent was
    assert branch.meta[0].alpha_bar == pytest.approx(parent.meta[K].alpha_bar_next, rel=1e-6)
    assert all(m1.t > m2.t for m1, m2 in zip(branch.meta, branch.meta[1:]))
    assert branch.meta[-1].t_next == -1.0 and branch.meta[-1].alpha_bar_next == pytest.approx(1.0)
    assert torch.equal(branch.full_state(-1)["x"], parent.full_state(K)["x"])  # from the parent's state
    assert (branch.final() - parent.final()).abs().max() > 1e-3
    # the same state carried on by a different (still consistent) sampler lands in the same mixture component
    # for deterministic branches; for any branch the result is a finished, finite image
    assert torch.isfinite(branch.final()).all()
    if branch_sampler in ("euler", "ddim", "heun") and parent_sampler in ("ddim", "dpmpp_2m", "euler"):
        assert torch.equal(gmm.nearest_component(branch.final()), gmm.nearest_component(parent.final()))


def test_changed_label_and_guidance_branch_steers_to_class(gmm):
    """An unconditional parent, branched early (t still high) with label 2 and CFG w = 4: the rest of the chain
    is guided, so every sample ends in component 2 (the parent's do not)."""
    parent = _run(gmm, _recipe("ddim").replace(batch=8))
    assert not (gmm.nearest_component(parent.final()) == 2).all()
    for changes, expect_steps in [
        (dict(label=2, guidance="cfg", scale=4.0), STEPS - 1 - 1),  # same plan: continues on the parent's plan
        (dict(label=2, guidance="cfg", scale=4.0, steps=6), 6),  # new plan: the requested steps
        (dict(label=2, guidance="classifier", scale=3.0, sampler="dpmpp_2m", steps=7), 7),
    ]:
        run = Run(_recipe("ddim").replace(**changes), model=gmm, parent=parent, from_step=1)
        branch = run.run_to_end()
        assert len(branch) == expect_steps, changes
        assert branch.meta[0].t == pytest.approx(parent.meta[1].t_next)
        assert all(m.guided for m in branch.meta)
        assert (gmm.nearest_component(branch.final()) == 2).all(), changes
        assert (branch.final() - parent.final()).abs().max() > 1e-2


def test_branch_recipe_round_trips_and_execute_reproduces_it(gmm, tmp_path):
    parent = _run(gmm, _recipe("ddpm"))
    run = Run(_recipe("euler_a").replace(steps=5, label=1, guidance="cfg", scale=2.5), model=gmm, parent=parent,
              from_step=2)
    branch = run.run_to_end()
    text = run.recipe.to_json()
    d = json.loads(text)
    assert d["branch"]["from_step"] == 2 and d["branch"]["parent"]["sampler"] == "ddpm"
    path = tmp_path / "branch.json"
    path.write_text(text)
    again = Recipe.load(path)
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "versions"}  # noqa: E731
    assert strip(again) == strip(run.recipe)
    cache = ModelCache()
    replay = execute(again, cache)
    assert len(replay) == len(branch) == 5
    assert torch.equal(replay.final(), branch.final())
    for j in range(5):
        assert torch.equal(replay.full_state(j)["x"], branch.full_state(j)["x"])
    # and a same-settings branch replays exactly too (parent re-run, then continued from the carry)
    r2 = Run(_recipe("ddpm"), model=gmm, parent=parent, from_step=4)
    b2 = r2.run_to_end()
    assert torch.equal(execute(Recipe.from_json(r2.recipe.to_json()), cache).final(), b2.final())


def test_bad_branch_points(gmm):
    parent = _run(gmm, _recipe("ddim"))
    with pytest.raises(RecipeError):
        Run(_recipe("ddim"), model=gmm, parent=parent, from_step=STEPS)
    with pytest.raises(RecipeError):
        Run(_recipe("ddim"), model=gmm, parent=parent, from_step=-2)
    with pytest.raises(RecipeError, match="last step"):
        Run(_recipe("euler"), model=gmm, parent=parent, from_step=STEPS - 1)
