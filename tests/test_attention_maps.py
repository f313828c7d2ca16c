"""Cross-attention maps (``--attention``): captured as the layers compute them, aggregated as DAAM does,
without changing the sample, refused where there is no cross-attention, exported as documented.

Truths are independent of the capture: each layer's inputs are hooked (a forward pre-hook on the
diffusers ``Attention``) and its probabilities recomputed with diffusers' own ``head_to_batch_dim`` and
``get_attention_scores``; DAAM's aggregation is recomputed layer by layer (upsample each layer's map,
average, clamp), as Tang et al.'s code does it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from studio.core import engine
from studio.core.attention import (CrossAttentionCapture, StepAttention, cross_attention_layers, has_cross_attention,
                                   prompt_tokens)
from studio.core.guidance import Guidance
from studio.core.pipeline import load_pipeline_folder
from studio.session.attention_maps import AttentionMaps
from studio.session.recipe import Recipe, RecipeError
from studio.session.runner import Run
from text_pipelines import PROMPT, make_sd_pipeline, make_sdxl_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

BATCH = 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention-pipelines")
    return {"sd": make_sd_pipeline(root / "sd"), "sdxl": make_sdxl_pipeline(root / "sdxl")}


@pytest.fixture(scope="module")
def models(folders):
    return {k: load_pipeline_folder(v, torch.device("cpu"), torch.float32) for k, v in folders.items()}


def hooked_inputs(unet) -> tuple[dict, list]:
    """Forward pre-hooks on every cross-attention layer, recording (name, hidden_states, encoder_hidden_states)."""
    seen, handles = [], []
    for name, attn in cross_attention_layers(unet).items():
        def hook(module, args, kwargs, name=name):
            seen.append((name, args[0].detach().clone(), kwargs["encoder_hidden_states"].detach().clone()))
        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


def independent_map(attn, hidden, encoder, tokens: int, batch: int) -> torch.Tensor:
    """(batch, tokens, positions): the conditional half's probabilities, heads averaged, by diffusers' own
    head split and ``get_attention_scores``."""
    q = attn.head_to_batch_dim(attn.to_q(hidden[:batch]))
    k = attn.head_to_batch_dim(attn.to_k(encoder[:batch]))
    probs = attn.get_attention_scores(q, k, None)  # (batch·heads, positions, all tokens)
    probs = probs.view(batch, attn.heads, *probs.shape[1:]).mean(dim=1)
    return probs[..., :tokens].transpose(1, 2)


def captured_steps(model, sampler: str = "heun", steps: int = 2, prompt: str = PROMPT):
    """[(layer maps, the step's StepAttention, the layers' hooked inputs, the step's UNet evaluations)] of a
    CFG run with capture open."""
    ids, _, _ = prompt_tokens(model, prompt)
    layers = cross_attention_layers(model.unet)
    out = []
    seen, handles = hooked_inputs(model.unet)
    cap = CrossAttentionCapture(model.unet, batch=BATCH, tokens=len(ids), keep_layers=True)
    try:
        with cap, torch.no_grad():
            nfe = 0
            for rec in engine.sample(model, sampler, steps, batch=BATCH, prompt=prompt, guidance=Guidance("cfg", 4.0)):
                kept = list(cap.layer_maps)
                out.append((kept, cap.take_step(), list(seen), rec.nfe - nfe))
                seen.clear()
                nfe = rec.nfe
    finally:
        for h in handles:
            h.remove()
    return out, layers, len(ids)


@pytest.mark.parametrize("key", ["sd", "sdxl"])
def test_each_layer_map_equals_get_attention_scores(models, key):
    model = models[key]
    steps, layers, tokens = captured_steps(model)
    for kept, _, seen, _ in steps:
        assert [name for name, _ in kept] == [name for name, _, _ in seen] and kept  # every layer evaluation
        for (name, got), (_, hidden, encoder) in zip(kept, seen):
            assert hidden.shape[0] == 2 * BATCH  # the CFG batch; the conditional half is the first
            want = independent_map(layers[name], hidden, encoder, tokens, BATCH)
            assert got.shape[:2] == (BATCH, tokens)
            torch.testing.assert_close(got.flatten(2), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("key", ["sd", "sdxl"])
def test_daam_aggregation_matches_a_direct_computation(models, key):
    model = models[key]
    steps, _, tokens = captured_steps(model)
    latent = (model.info.sample_size, model.info.sample_size)
    for kept, step, _, evaluations in steps:
        ups = [F.interpolate(m, size=latent, mode="bicubic", align_corners=False) for _, m in kept]
        direct = torch.stack(ups).mean(dim=0).clamp(min=0)  # DAAM: each layer upsampled, averaged, clamped
        assert step.maps.shape == (BATCH, tokens, *latent)
        torch.testing.assert_close(step.maps, direct, atol=1e-6, rtol=1e-5)
        for res, mean in step.per_resolution.items():
            at_res = [m for _, m in kept if tuple(m.shape[-2:]) == res]
            assert step.layers[res] == len(at_res)
            torch.testing.assert_close(mean, torch.stack(at_res).mean(dim=0), atol=1e-6, rtol=1e-5)
        assert step.evaluations == evaluations  # heun: every UNet evaluation of the step is averaged
        assert sum(step.layers.values()) == len(kept)
    assert [e for *_, e in steps] == [2, 1]  # Heun's second evaluation, then the last step's Euler one
    # the probabilities of the kept tokens are a share of each position's attention
    assert float(steps[0][1].per_resolution[max(steps[0][1].per_resolution)].sum(dim=1).max()) <= 1 + 1e-5


@pytest.mark.parametrize("key", ["sd", "sdxl"])
def test_capture_on_and_off_give_bitwise_identical_samples(models, folders, key):
    model = models[key]
    recipe = Recipe(model=str(folders[key]), prompt=PROMPT, steps=3, batch=BATCH, sampler="heun", scale=4.0,
                    guidance="cfg")
    before = {n: a.processor for n, a in cross_attention_layers(model.unet).items()}
    off = Run(recipe, model=model)
    for _ in off:  # capture off installs nothing: the layers keep their own processors throughout
        assert {n: a.processor for n, a in cross_attention_layers(model.unet).items()} == before
    during = []  # the layers' processors while the UNet evaluates
    probe = model.unet.register_forward_pre_hook(lambda *_: during.append(
        {n: a.processor for n, a in cross_attention_layers(model.unet).items()}))
    on = Run(recipe.replace(attention=True), model=model)
    try:
        for _ in on:  # between steps (a paused run) the model is as it was
            assert {n: a.processor for n, a in cross_attention_layers(model.unet).items()} == before
    finally:
        probe.remove()
    assert len(during) == on.trajectory.meta[-1].nfe  # every evaluation ran through the capturing processors
    assert all(p[n] is not before[n] and p[n].inner is before[n] for p in during for n in before)
    a, b = off.trajectory, on.trajectory
    assert off.trajectory.attention is None and len(b.attention) == 3
    for k in range(3):
        sa, sb = a.full_state(k), b.full_state(k)
        assert torch.equal(sa["x"], sb["x"]) and torch.equal(sa["x0"], sb["x0"])
    # the capture is gone after the run: the same processors, no hook left on the UNet
    assert {n: a.processor for n, a in cross_attention_layers(model.unet).items()} == before
    assert not model.unet._forward_pre_hooks


def test_overlapping_captures_restore_the_layers_own_processors(models):
    unet = models["sd"].unet
    own = {n: a.processor for n, a in cross_attention_layers(unet).items()}
    first, second = CrossAttentionCapture(unet, 1, 3), CrossAttentionCapture(unet, 1, 3)
    first.__enter__()
    second.__enter__()
    assert all(a.processor.inner is own[n] for n, a in cross_attention_layers(unet).items())  # never nested
    first.__exit__(None, None, None)  # closed out of order: the second keeps capturing
    assert all(a.processor.capture is second for a in cross_attention_layers(unet).values())
    second.__exit__(None, None, None)
    assert {n: a.processor for n, a in cross_attention_layers(unet).items()} == own
    assert not unet._forward_pre_hooks


def test_run_keeps_maps_with_documented_shapes(models, folders):
    model = models["sdxl"]
    recipe = Recipe(model=str(folders["sdxl"]), prompt="a red 7", steps=3, batch=BATCH, attention=True)
    maps = Run(recipe, model=model).run_to_end().attention
    ids, strings, weights = prompt_tokens(model, "a red 7")
    assert maps.tokens == strings == ["<|startoftext|>", "a", "r", "e", "d", "7", "<|endoftext|>"]
    assert maps.token_ids == ids and weights == [1.0] * len(ids)
    assert maps.steps == [0, 1, 2] and maps.latent_size == (8, 8) and maps.batch == BATCH
    assert maps.map(2, 1, sample=1).shape == (8, 8) and maps.map(2, 1).dtype == np.float32
    assert maps.token_maps(0).shape == (len(ids), 8, 8)
    (res,) = maps.resolutions  # SDXL-style: cross-attention only at the lower level
    assert res == (4, 4) and maps.layers[res] == 2 + 2 * 2 + 2  # down: 2 layers, mid: 2, up: 2 blocks × 2
    assert maps.resolution_map(1, 0, res).shape == (4, 4)
    arrays = maps.arrays()
    assert arrays["maps"].dtype == np.float16 and arrays["maps"].shape == (3, BATCH, len(ids), 8, 8)
    assert arrays["maps_4x4"].shape == (3, BATCH, len(ids), 4, 4)
    assert maps.nbytes == arrays["maps"].nbytes + arrays["maps_4x4"].nbytes
    assert not maps.notes


def test_weighted_prompt_tokens_are_its_text_without_brackets(models):
    plain = prompt_tokens(models["sd"], "a red 7")
    weighted = prompt_tokens(models["sd"], "a (red:1.3) 7")
    assert weighted[1] == plain[1] and weighted[0] == plain[0]
    negative = prompt_tokens(models["sd"], "a (red:-0.5) 7")  # a negative weight keeps its token (and the end token)
    assert negative[0] == plain[0] and negative[2][2] == -0.5


def fake_step(batch: int, tokens: int, side: int) -> StepAttention:
    return StepAttention(torch.rand(batch, tokens, side, side), {(side // 2, side // 2): torch.rand(batch, tokens, side // 2, side // 2)},
                         {(side // 2, side // 2): 3}, 1)


def test_memory_cap_thins_steps_and_says_so():
    per_step = (2 * 5 * 16 * 16 + 2 * 5 * 8 * 8) * 2  # float16 bytes of one step
    maps = AttentionMaps(["t"] * 5, list(range(5)), steps=10, limit_bytes=4 * per_step)
    for k in range(10):
        if maps.wants(k):
            maps.append(k, fake_step(2, 5, 16))
    assert maps.stride == 3 and maps.steps == [0, 3, 6, 9]  # every 3rd and the last: 4 steps fit
    assert maps.nbytes == 4 * per_step <= maps.limit_bytes
    assert len(maps.notes) == 1 and "one step in 3 kept (4 of 10" in maps.notes[0]
    assert maps.nearest_step(5) == 3 and maps.nearest_step(9) == 9


def test_one_step_above_the_cap_keeps_nothing_with_a_note():
    maps = AttentionMaps(["t"] * 5, list(range(5)), steps=4, limit_bytes=1000)
    maps.append(0, fake_step(2, 5, 16))
    assert len(maps) == 0 and maps.nbytes == 0 and not maps.wants(1)
    assert maps.notes and maps.notes[0].startswith("attention maps were not kept: one step's take")


@pytest.mark.parametrize("model", ["gmm", "default"])
def test_models_without_cross_attention_are_refused(model):
    label = 1 if model == "default" else None
    with pytest.raises(RecipeError, match=f"--attention needs a text-to-image model .* model '{model}' has no "
                                          "cross-attention"):
        Recipe(model=model, label=label, attention=True).validate()


def test_a_unet2dmodel_folder_is_refused_in_one_line(tmp_path):
    from _models import make_unet, save_model_folder
    from studio.checkpoints.models import load_model

    folder = save_model_folder(make_unet(num_class_embeds=3), tmp_path / "pixels")
    model = load_model(str(folder), "cpu")
    assert not has_cross_attention(model)
    with pytest.raises(RecipeError, match="has no cross-attention; leave --attention out"):
        Run(Recipe(model=str(folder), steps=2, batch=1, label=1, attention=False).replace(attention=True), model=model)


def test_cli_refuses_attention_on_gmm(capsys):
    from studio.cli import main

    assert main(["sample", "--model", "gmm", "--attention", "--steps", "2", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--attention needs a text-to-image model" in err


@pytest.mark.slow
def test_digits_text_keeps_maps_of_its_tokens():
    from studio.checkpoints.models import load_model

    model = load_model("digits-text", "cpu")
    prompt = "a red seven on a blue background"
    recipe = Recipe(model="digits-text", prompt=prompt, steps=4, batch=BATCH, attention=True)
    off = Run(recipe.replace(attention=False), model=model).run_to_end()
    on = Run(recipe, model=model).run_to_end()
    assert torch.equal(off.final(), on.final())
    maps = on.attention
    assert maps.tokens == ["<|startoftext|>", "a", "red", "seven", "on", "a", "blue", "background", "<|endoftext|>"]
    side = model.info.sample_size
    assert maps.latent_size == (side, side) and len(maps) == 4
    assert len(maps.resolutions) >= 2  # cross-attention at several levels, each kept apart
    all_maps = maps.arrays()["maps"].astype(np.float32)
    assert all_maps.min() >= 0 and all_maps.sum(axis=2).max() <= 1.01  # shares of each position's attention


def test_export_files_open_with_documented_shapes(models, folders, tmp_path):
    from studio.session.attention_export import export_attention

    recipe = Recipe(model=str(folders["sd"]), prompt="7", steps=3, batch=1, attention=True)
    traj = Run(recipe, model=models["sd"]).run_to_end()
    out = export_attention(traj, tmp_path / "attention", step=2)
    with np.load(out / "maps.npz", allow_pickle=False) as z:
        assert z["maps"].shape == (3, 1, 3, 8, 8) and z["maps"].dtype == np.float16
        assert z["maps_8x8"].shape == (3, 1, 3, 8, 8) and z["maps_4x4"].shape == (3, 1, 3, 4, 4)
        assert z["layers_8x8"] == 3 and z["layers_4x4"] == 1  # down 1, up 2 at 8×8; the mid block at 4×4
        assert list(z["tokens"]) == ["<|startoftext|>", "7", "<|endoftext|>"] and list(z["steps"]) == [0, 1, 2]
        np.testing.assert_array_equal(z["maps"][1, 0, 1], traj.attention.map(1, 1).astype(np.float16))
    index = json.loads((out / "attention.json").read_text())
    assert index["tokens"] == traj.attention.tokens and index["chosen_step"] == 2 and index["steps_kept"] == [1, 2, 3]
    for folder in ("final", "step_0002"):
        pngs = sorted(p.name for p in (out / folder).glob("*.png"))
        assert pngs == ["00_startoftext.png", "01_7.png", "02_endoftext.png"]
        with Image.open(out / folder / pngs[1]) as im:
            assert im.mode == "RGB" and max(im.size) >= 256
        with Image.open(out / f"grid_{folder}.png") as im:
            assert im.width >= 3 * 96
    with Image.open(out / "attention.gif") as gif:
        assert gif.n_frames == 3
    traj.close()


@pytest.mark.slow
def test_cli_writes_attention_into_the_run_folder(folders, tmp_path, capsys):
    from studio.cli import main

    out = tmp_path / "run"
    assert main(["sample", "--model", str(folders["sd"]), "--prompt", "a red 7", "--steps", "3", "--batch", "1",
                 "--attention", "--attention-step", "2", "--out", str(out)]) == 0
    assert "attention/ (7 tokens at 3 steps" in capsys.readouterr().err
    assert (out / "attention" / "maps.npz").is_file() and (out / "attention" / "step_0002").is_dir()
    assert json.loads((out / "recipe.json").read_text())["attention"] is True
    assert main(["sample", "--model", str(folders["sd"]), "--prompt", "a", "--steps", "3", "--attention-step", "2",
                 "--out", str(tmp_path / "no")]) == 2
    assert "--attention-step applies to runs that keep attention maps; add --attention" in capsys.readouterr().err
