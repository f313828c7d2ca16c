"""Tests for studio.training: dataset, trainers (tiny configs), save/load."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.data import digits as D
from studio.training.classifier import (NoiseAwareClassifier, load_classifier, save_classifier,
                                        train_classifier)
from studio.training.diffusion import export_checkpoint, fixed_batch_loss, train_diffusion
from studio.evaluation.evaluator import DigitEvaluator, load_evaluator
from studio.training.evaluator import save_evaluator, train_evaluator
from studio.training.unet_config import TINY_UNET_CONFIG, make_unet

TINY_CLF = dict(base_channels=8, channel_mult=(1, 2), time_embed_dim=32, norm_groups=4)
TINY_EVAL = dict(widths=(8, 16), feature_dim=16)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: more threads only contend for a shared CPU
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


# ----------------------------------------------------------------------------- dataset
def test_dataset_deterministic_for_seed():
    a_img, a_lab = D.make_dataset(40, seed=7)
    b_img, b_lab = D.make_dataset(40, seed=7)
    c_img, c_lab = D.make_dataset(40, seed=8)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(D.render_digit(5, rng1), D.render_digit(5, rng2))


def test_dataset_values_and_labels():
    images, labels = D.make_dataset(200, seed=0)
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (200,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 15 and counts.max() <= 25  # balanced-ish
    per_image_std = images.reshape(200, -1).std(axis=1)
    assert (per_image_std > 10).all()  # no constant images
    # the float view is in [-1, 1]
    x = D.to_float(images[:4])
    assert x.shape == (4, 3, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_every_font_renders_every_digit():
    for font in D.FONT_NAMES:
        for label in range(10):
            g = D._glyph(label, font, 0)
            assert g.size[0] > 5 and g.size[1] > 20, (font, label)


def test_write_dataset_reads_back(tmp_path):
    out = D.write_dataset(tmp_path / "ds", 12, seed=3)
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files[0] == "000000.png" and len(files) == 12
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == ["file", "label"] and len(rows) == 12
    images, labels = D.read_dataset(out)
    ref_img, ref_lab = D.make_dataset(12, seed=3)
    assert np.array_equal(images, ref_img) and np.array_equal(labels, ref_lab)


def test_dataset_cache_roundtrip(tmp_path):
    a = D.load_cached(tmp_path, 20, 4)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    b = D.load_cached(tmp_path, 20, 4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- diffusion
class StepClock:
    """A clock that the progress callback, called once per training step, moves on by ``per_step``
    seconds: every step takes exactly that long, whatever the machine's speed. ``jumps``: further
    seconds added after the step of that number (a stall)."""

    def __init__(self, per_step: float, jumps: dict | None = None):
        self.now, self.per_step, self.jumps = 0.0, per_step, jumps or {}

    def __call__(self) -> float:
        return self.now

    def step(self, step, total, loss, eta_s) -> None:
        self.now += self.per_step + self.jumps.get(step, 0.0)


@pytest.mark.slow
def test_diffusion_tiny_trains_checkpoints_and_resumes(tmp_path, cache):
    out = tmp_path / "diff"
    kw = dict(batch_size=8, seed=0, lr=3e-3, checkpoint_every=15, dataset_cache=cache,
              dataset_n=64, unet_config=TINY_UNET_CONFIG, warmup_steps=1, grid_per_class=1,
              grid_steps=2, grid_every=None)
    images, labels = D.load_cached(cache, 64, 0)
    x0, y = D.to_float(images[:16]), torch.from_numpy(labels[:16])
    torch.manual_seed(0)
    before = fixed_batch_loss(make_unet(TINY_UNET_CONFIG), x0, y)

    s1 = train_diffusion(out, steps=30, **kw)
    assert s1["step"] == 30
    ck = out / "checkpoints" / "step_000030"
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors",
                 "rng.safetensors", "state.json", "samples.png"):
        assert (ck / name).is_file(), name
    assert (out / "samples" / "step_000015.png").is_file()
    final = out / "final"
    assert {"config.json", "diffusion_pytorch_model.safetensors",
            "scheduler_config.json"} <= {p.name for p in final.iterdir()}
    from diffusers import DDPMScheduler, UNet2DModel

    m = UNet2DModel.from_pretrained(str(final))
    assert m.config.num_class_embeds == 11
    assert DDPMScheduler.from_pretrained(str(final)).config.prediction_type == "epsilon"
    raw = make_unet(TINY_UNET_CONFIG)
    from safetensors.torch import load_file

    raw.load_state_dict(load_file(str(ck / "model.safetensors")))
    after = fixed_batch_loss(raw, x0, y)
    assert after < before

    # resume continues from step 30, not from 0
    s2 = train_diffusion(out, steps=36, **kw)
    assert s2["step"] == 36
    with open(out / "loss.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(steps) and steps[-1] == 36 and steps.count(30) == 1
    assert json.loads((out / "checkpoints" / "step_000036" / "state.json").read_text())["step"] == 36
    # an explicit export of a checkpoint works too
    export_checkpoint(out / "checkpoints" / "step_000036", tmp_path / "exp")
    assert (tmp_path / "exp" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
def test_diffusion_resume_is_exact(tmp_path, cache):
    """20 straight steps == a run of 20 stopped after step 10 (its time limit run out by a stall)
    and resumed to 20 (same weights)."""
    kw = dict(batch_size=4, seed=1, lr=1e-3, checkpoint_every=0, dataset_cache=cache,
              dataset_n=64, unet_config=TINY_UNET_CONFIG, warmup_steps=1, grid_per_class=1,
              grid_steps=1, export=False)
    train_diffusion(tmp_path / "a", steps=20, **kw)
    clock = StepClock(0.0, jumps={10: 1.0})
    assert train_diffusion(tmp_path / "b", steps=20, time_limit_s=0.5, clock=clock, progress=clock.step,
                           **kw)["step"] == 10
    train_diffusion(tmp_path / "b", steps=20, **kw)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a/checkpoints/step_000020/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step_000020/model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_min_snr_weights_closed_form():
    """Min-SNR-γ (Hang et al. 2023) for ε-prediction: weight 1 where SNR ≤ γ, γ/SNR above."""
    from studio.training.diffusion import min_snr_weights
    from studio.training.unet_config import alphas_cumprod

    ac = alphas_cumprod().float()
    w = min_snr_weights(ac, 5.0)
    snr = (ac / (1 - ac)).double()
    low = snr <= 5.0
    assert low.any() and (~low).any()
    assert torch.allclose(w[low].double(), torch.ones(int(low.sum()), dtype=torch.float64))
    assert torch.allclose(w[~low].double(), 5.0 / snr[~low], rtol=1e-5)
    # t = 0 (SNR ≈ 1e4) is weighted ≈ 5e-4; t = 999 (SNR ≈ 4e-5) is weighted 1
    assert w[0] < 1e-3 and w[-1] == 1.0


def test_diffusion_loss_with_min_snr_matches_per_sample_sum(cache):
    from studio.training.diffusion import diffusion_loss
    from studio.training.unet_config import alphas_cumprod

    torch.manual_seed(0)
    model = make_unet(TINY_UNET_CONFIG).eval()
    images, labels = D.load_cached(cache, 64, 0)
    x0, y = D.to_float(images[:6]), torch.from_numpy(labels[:6])
    ac = alphas_cumprod().float()
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    noise = torch.randn(x0.shape)
    with torch.no_grad():
        plain = diffusion_loss(model, x0, y, t, noise, ac)
        weighted = diffusion_loss(model, x0, y, t, noise, ac, snr_gamma=5.0)
        a = ac[t].double()
        xt = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
        err = (model(xt.float(), t, class_labels=y).sample - noise).pow(2).mean(dim=(1, 2, 3)).double()
    snr = a / (1 - a)
    expect = (torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr * err).mean()
    assert abs(plain.item() - err.mean().item()) < 1e-5 * err.mean().item() + 1e-7
    assert abs(weighted.item() - expect.item()) < 1e-4 * expect.item() + 1e-7
    assert weighted < plain  # small-t samples are down-weighted


# ----------------------------------------------------------------------------- classifier
def test_classifier_tiny_trains_and_resumes(tmp_path, cache):
    out = tmp_path / "clf"
    kw = dict(batch_size=16, seed=0, lr=3e-3, checkpoint_every=20, dataset_cache=cache,
              dataset_n=64, model_config=TINY_CLF, eval_n=20, warmup_steps=1)
    s1 = train_classifier(out, steps=40, **kw)
    assert s1["step"] == 40 and (out / "checkpoints" / "step_000040" / "model.safetensors").is_file()
    with open(out / "loss.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert losses[-1] < losses[0]
    assert set(s1["noisy_accuracy"]) == {"0-99", "100-299", "300-499", "500-699", "700-899", "900-999"}
    s2 = train_classifier(out, steps=50, **kw)
    assert s2["step"] == 50
    m = load_classifier(out / "final")
    assert isinstance(m, NoiseAwareClassifier)


def test_classifier_roundtrip_and_fractional_t(tmp_path):
    torch.manual_seed(0)
    m = NoiseAwareClassifier(**TINY_CLF).eval()
    save_classifier(m, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["_class_name"] == "NoiseAwareClassifier"
    assert cfg["num_classes"] == 10 and cfg["num_train_timesteps"] == 1000
    m2 = load_classifier(tmp_path / "c")
    x = torch.randn(3, 3, 32, 32)
    t = torch.tensor([0.0, 250.5, 999.0])
    with torch.no_grad():
        out1, out2 = m(x, t), m2(x, t)
    assert out1.shape == (3, 10) and torch.equal(out1, out2)
    assert NoiseAwareClassifier.from_config(m.config).config == m.config


def test_load_classifier_errors(tmp_path):
    m = NoiseAwareClassifier(**TINY_CLF)
    d = save_classifier(m, tmp_path / "c")
    w = d / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="model.safetensors"):
        load_classifier(d)
    w.unlink()
    with pytest.raises(ValueError, match="not found"):
        load_classifier(d)
    # shape mismatch: weights of a different architecture
    save_classifier(NoiseAwareClassifier(**{**TINY_CLF, "base_channels": 16}), tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").replace(w)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_classifier(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_classifier(d)


# ----------------------------------------------------------------------------- evaluator
def test_evaluator_tiny_and_roundtrip(tmp_path, cache):
    out = tmp_path / "ev"
    s = train_evaluator(out, steps=30, batch_size=16, lr=3e-3, dataset_cache=cache,
                        dataset_n=64, test_n=20, model_config=TINY_EVAL, checkpoint_every=0,
                        warmup_steps=1)
    assert s["step"] == 30 and 0.0 <= s["test_accuracy"] <= 1.0
    m = load_evaluator(out / "final")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert m.features(x).shape == (2, 16) and m.logits(x).shape == (2, 10)
    m2 = DigitEvaluator(**TINY_EVAL).eval()
    save_evaluator(m2, tmp_path / "e2")
    m3 = load_evaluator(tmp_path / "e2")
    with torch.no_grad():
        assert torch.equal(m2(x), m3(x))


# ----------------------------------------------------------------------------- LR schedule
def test_cosine_lr_closed_form():
    from studio.training.lr_schedule import cosine_lr

    base, warm, total = 1e-3, 10, 110
    assert cosine_lr(0, total, base, warm) == pytest.approx(base / warm)
    assert cosine_lr(9, total, base, warm) == pytest.approx(base)
    assert cosine_lr(10, total, base, warm) == pytest.approx(base)  # decay starts at its peak
    assert cosine_lr(60, total, base, warm) == pytest.approx(base * (0.05 + 0.95 * 0.5))  # half-way
    assert cosine_lr(110, total, base, warm) == pytest.approx(0.05 * base)
    assert cosine_lr(500, total, base, warm) == pytest.approx(0.05 * base)  # stays at the floor
    lrs = [cosine_lr(s, total, base, warm) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_fit_steps_to_time():
    from studio.training.lr_schedule import fit_steps_to_time

    # 20 steps done at 2 s/it with 100 s left: 47 more steps (5 % margin), never above the request
    assert fit_steps_to_time(20, 1000, 2.0, 100.0) == 20 + 47
    assert fit_steps_to_time(20, 50, 2.0, 100.0) == 50


def simulate_fitted_run(limit_s: float, s_per_it, requested: int = 100_000):
    """Runs ``TimeFittedTotal`` on a simulated clock where step ``i`` takes ``s_per_it(i)``
    seconds; returns (steps done, seconds used, the totals it fitted)."""
    from studio.training.lr_schedule import TimeFittedTotal

    fit = TimeFittedTotal(requested, limit_s, 0.0, 0)
    now, step, total, totals = 0.0, 0, requested, []
    while step < total and now <= limit_s:
        now += s_per_it(step)
        step += 1
        total = fit.update(step, now)
        totals.append(total)
    return step, now, totals


def test_time_fitted_total_follows_a_drifting_speed():
    # 0.55 s/it for the first 300 steps, then 0.71 s/it (as a shared CPU did in a real run):
    # a schedule fitted once after 60 steps would have been cut by the limit 22 % short of its end
    def drifting(i):
        return 0.55 if i < 300 else 0.71

    steps, used, totals = simulate_fitted_run(2400.0, drifting)
    assert steps == totals[-1] and 0.95 * 2400 < used <= 0.98 * 2400  # finished its schedule, in time
    first_fit = totals[60]
    assert first_fit > 1.2 * steps  # the early fit was too optimistic; the refits corrected it
    jumps = [abs(a - b) / a for a, b in zip(totals[60:], totals[61:])]
    assert max(jumps) < 0.1  # each refit moves the total by little: the schedule stays smooth
    # a steady speed: one fit is right and the refits hardly move it
    steps, used, totals = simulate_fitted_run(2400.0, lambda i: 0.6)
    assert 0.95 * 2400 < used <= 0.98 * 2400 and abs(totals[60] - steps) < 0.01 * steps


def test_time_fitted_total_never_exceeds_the_request():
    steps, used, totals = simulate_fitted_run(2400.0, lambda i: 0.6, requested=500)
    assert steps == 500 and set(totals) == {500} and used == pytest.approx(300)


@pytest.mark.slow
def test_diffusion_cosine_schedule_is_logged_and_validated(tmp_path, cache):
    from studio.training.lr_schedule import cosine_lr

    out = tmp_path / "cos"
    train_diffusion(out, steps=30, batch_size=4, lr=1e-3, dataset_cache=cache, dataset_n=64,
                    unet_config=TINY_UNET_CONFIG, checkpoint_every=0, warmup_steps=5,
                    log_every=10, grid_per_class=1, grid_steps=2, export=False,
                    lr_schedule="cosine")
    rows = list(csv.DictReader(open(out / "loss.csv")))
    got = [float(r["lr"]) for r in rows]
    want = [cosine_lr(int(r["step"]) - 1, 30, 1e-3, 5) for r in rows]
    assert got == pytest.approx(want, rel=1e-2)
    assert got[-1] < got[0]
    with pytest.raises(ValueError, match="lr_schedule"):
        train_diffusion(tmp_path / "bad", steps=2, lr_schedule="linear", dataset_cache=cache,
                        dataset_n=64, unet_config=TINY_UNET_CONFIG)


TIMED = dict(batch_size=4, lr=1e-3, unet_config=TINY_UNET_CONFIG, dataset_n=64, checkpoint_every=0,
             warmup_steps=5, log_every=1, grid_per_class=1, grid_steps=2, export=False, lr_schedule="cosine")


@pytest.mark.slow
def test_time_limited_run_ends_its_schedule_in_time(tmp_path, cache):
    """A time-limited run on a clock where each step takes 0.125 s: the schedule is shortened to
    the limit, run to its end (the learning rate reaches its floor), and the checkpoint records from
    what it was fitted."""
    out = tmp_path / "timed"
    clock = StepClock(0.125)
    s = train_diffusion(out, steps=100_000, dataset_cache=cache, time_limit_s=12.5, clock=clock,
                        progress=clock.step, **TIMED)
    # fitted at step 60 to end 3 % (TimeFittedTotal's slack) before the limit: 0.97 * 12.5 s / 0.125 s
    assert s["step"] == s["target_steps"] == 97 and not s["stopped_early"]
    assert clock.now == 97 * 0.125 <= 12.5
    assert s["steps_reduced_to_fit_time_limit_from"] == 100_000
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 98))
    assert float(rows[-1]["lr"]) < 0.1 * 1e-3  # at the floor
    state = json.loads((Path(s["checkpoint"]) / "state.json").read_text())
    assert (state["fitted_from"], state["fitted_total"]) == (100_000, 97)


@pytest.mark.slow
def test_a_stopped_time_fitted_run_resumes_on_its_schedule(tmp_path, cache):
    """A stall after step 70 runs the clock past the limit: the run stops early, checkpointed with
    the fitted total; the same command again (no limit now) goes on to that total, with the
    learning rates of the fitted schedule, and the log keeps one row per step."""
    from studio.training.lr_schedule import cosine_lr

    out = tmp_path / "stalled"
    clock = StepClock(0.125, jumps={70: 100.0})
    s1 = train_diffusion(out, steps=100_000, dataset_cache=cache, time_limit_s=12.5, clock=clock,
                         progress=clock.step, **TIMED)
    assert s1["stopped_early"] and s1["step"] == 70 and s1["target_steps"] == 97
    s2 = train_diffusion(out, steps=100_000, dataset_cache=cache, **TIMED)
    assert s2["step"] == s2["target_steps"] == 97 and not s2["stopped_early"]
    assert s2["steps_reduced_to_fit_time_limit_from"] == 100_000
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 98))
    after = [float(r["lr"]) for r in rows[70:]]
    assert after == pytest.approx([cosine_lr(i, 97, 1e-3, 5) for i in range(70, 97)], rel=1e-2)


def test_resumed_steps_keep_a_fitted_schedule():
    from studio.training.ckpt import resumed_steps

    fitted = {"fitted_from": 20000, "fitted_total": 4371}
    assert resumed_steps(fitted, 20000) == 4371  # the same command again: the fitted schedule
    assert resumed_steps(fitted, 6000) == 6000  # a new total asked for: that one
    assert resumed_steps({"fitted_from": None, "fitted_total": None}, 800) == 800
