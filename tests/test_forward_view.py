"""The forward view (session/forward_view.py, gui/forward_view.py) against independent truths.

- x_t is the closed form √ᾱ_t x₀ + √(1 − ᾱ_t) ε with ᾱ_t = ∏(1 − β_s) from DDPM's linear β and ε the seed's
  initial noise, the ε an image-to-image run with that seed noises its image with.
- x̂₀ is the network's output converted by hand, x̂₀ = (x_t − √(1 − ᾱ) ε̂)/√ᾱ: a tiny diffusers UNet saved as a
  model folder, the exact gmm's conditional and unconditional ε* (CFG's two branches), and a tiny Stable
  Diffusion pipeline's UNet with its prompt embeddings (and its VAE decode for the pictures).
- Each position costs one network evaluation (counted by a model that counts its calls; a CFG evaluation is
  one call on a doubled batch) and none when asked again.
- The widget, offscreen: opening an image, scrubbing, x̂₀ arriving through its signal; the window: File →
  Open image and drops (a PNG with a recipe still opens as a recipe), "Denoise from here" as an ordinary
  image-to-image run, and bad image files as one line that leaves the run and the model alone.
"""
from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import math  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from studio.core.noise import NoiseSource  # noqa: E402
from studio.session.forward_view import ForwardView, denoise_recipe, nearest_start, noise_level  # noqa: E402
from studio.session.frames import to_uint8  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402
from _models import make_unet, save_model_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

GMM_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


class Counting:
    """A real model whose network calls are counted (``calls``: the batch size of each)."""

    def __init__(self, model):
        self._model = model
        self.calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def predict(self, x, t, labels, sigma):
        self.calls.append(int(x.shape[0]))
        return self._model.predict(x, t, labels, sigma)


def gmm_x0(gmm, component: int = 1) -> torch.Tensor:
    return gmm.means[component:component + 1].float().clamp(-1, 1)


def write_picture(path, size=(20, 24), seed: int = 0):
    arr = np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


# -- the numbers ------------------------------------------------------------------------------------------
def test_xt_is_the_closed_form_with_the_seeds_noise(gmm):
    recipe = Recipe(model="gmm", seed=7).validate()
    view = ForwardView(gmm, recipe, gmm_x0(gmm))
    ac = np.cumprod(1 - np.linspace(0.0001, 0.02, 1000))  # DDPM's linear β (Ho et al. 2020), in float64
    eps = NoiseSource(7).initial((1, 3, 16, 16))
    for t in (0, 1, 250, 999):
        a = float(ac[t])
        want = math.sqrt(a) * gmm_x0(gmm) + math.sqrt(1 - a) * eps
        assert torch.allclose(view.xt(t), want, atol=1e-6)
        level = view.level(t)
        assert level.alpha_bar == pytest.approx(a, rel=1e-6)  # ᾱ is kept in float32, as diffusers keeps it
        ab = level.alpha_bar
        assert level.sigma == pytest.approx(math.sqrt((1 - ab) / ab), rel=1e-12)
        assert level.snr == pytest.approx(ab / (1 - ab), rel=1e-12) == pytest.approx(1 / level.sigma ** 2)
    with pytest.raises(ValueError, match="0..999"):
        view.xt(1000)


def test_noise_levels_at_the_ends():
    assert noise_level(0, 1.0).snr == math.inf and noise_level(0, 1.0).sigma == 0
    assert noise_level(9, 0.0).sigma == math.inf and noise_level(9, 0.0).snr == 0


@pytest.fixture(scope="module")
def unet_model(tmp_path_factory):
    from studio.checkpoints.models import load_model

    unet = make_unet(sample_size=8).eval()
    folder = save_model_folder(unet, tmp_path_factory.mktemp("unet") / "m", GMM_SCHEDULE)
    return unet, load_model(str(folder), "cpu")


@pytest.mark.slow  # diffusers' import and a UNet folder; the gmm case below checks the same conversion fast
def test_x0_is_the_unets_noise_prediction_converted(unet_model):
    unet, model = unet_model
    x0 = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    view = ForwardView(model, Recipe(model="m", seed=3).validate(), x0)
    for t in (10, 600):
        a = float(view.alpha_bars[t])
        xt = view.xt(t)
        with torch.no_grad():
            eps = unet(xt, torch.tensor([t])).sample
        want = (xt - math.sqrt(1 - a) * eps) / math.sqrt(a)
        p = view.point(t)
        assert torch.allclose(p.x0, want, atol=1e-5 * max(1.0, float(want.abs().max())))
        assert p.error == pytest.approx(float(((want - x0) ** 2).mean().sqrt()), rel=1e-4)
        assert p.unguided_x0 is None and not view.guided
        assert np.array_equal(p.x0_frame, to_uint8(p.x0)) and np.array_equal(p.xt_frame, to_uint8(xt))


def test_cfg_gives_the_conditional_and_the_guided_x0_from_one_evaluation(gmm):
    model = Counting(gmm)
    recipe = Recipe(model="gmm", seed=2, label=2, guidance="cfg", scale=3.0).validate()
    view = ForwardView(model, recipe, gmm_x0(gmm, 0))
    t = 400
    a = float(view.alpha_bars[t])
    s, b = math.sqrt((1 - a) / a), math.sqrt(1 - a)
    xt = view.xt(t)
    p = view.point(t)
    assert model.calls == [2]  # one evaluation of the [conditional, unconditional] batch
    eps_c = gmm.predict(xt, torch.tensor([t]), torch.tensor([2]), s)
    eps_u = gmm.predict(xt, torch.tensor([t]), torch.tensor([gmm.info.null_label]), s)
    x0_c = (xt - b * eps_c) / math.sqrt(a)
    x0_g = (xt - b * (eps_u + 3.0 * (eps_c - eps_u))) / math.sqrt(a)
    assert view.guided and view.unguided_name == "conditional"
    assert torch.allclose(p.unguided_x0, x0_c, atol=1e-5)
    assert torch.allclose(p.x0, x0_g, atol=1e-5)
    assert not torch.allclose(p.x0, p.unguided_x0, atol=1e-3)


def test_each_position_is_evaluated_once_and_kept(gmm):
    model = Counting(gmm)
    view = ForwardView(model, Recipe(model="gmm", label=1).validate(), gmm_x0(gmm))
    first = view.point(300)
    assert model.calls == [1] and view.evaluations == 1
    assert view.point(300) is first and view.cached(300) is first
    assert model.calls == [1] and view.evaluations == 1
    view.point(700)
    assert len(model.calls) == 2
    t, err, ung = view.errors()
    assert list(t) == [300, 700] and ung is None
    assert err[0] == pytest.approx(first.error)
    fill = view.fill_positions(5)
    assert fill == [0, 250, 500, 749, 999]  # round(749.25); 300 and 700 are not on the grid; nothing computed is repeated
    view.point(500)
    assert 500 not in view.fill_positions(5)


def test_denoise_from_here_starts_at_the_nearest_plan_step(gmm):
    recipe = Recipe(model="gmm", sampler="ddim", steps=20).validate()
    start = nearest_start(gmm, recipe, 503)
    assert (start.index, start.t, start.steps) == (9, 500.0, 20)  # ddim's leading spacing: 950, 900, …, 0
    assert "plan step 9 of 20" in start.describe() and "t=503" in start.describe()
    run = denoise_recipe(recipe, "/some/image.png", start)
    assert run.init_image == "/some/image.png" and run.start_step == 9 and run.strength is None
    assert run.first_step() == 9


# -- a latent text pipeline --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_latent_model_evaluates_its_unet_and_shows_vae_decodes(tmp_path):
    from studio.core import images
    from studio.core.pipeline import load_pipeline_folder
    from text_pipelines import PROMPT, SIZE, make_sd_pipeline

    model = load_pipeline_folder(make_sd_pipeline(tmp_path / "sd"), torch.device("cpu"), torch.float32)
    path = write_picture(tmp_path / "pic.png", (SIZE, SIZE))
    recipe = Recipe(model="sd", prompt=PROMPT, guidance="cfg", scale=4.0, seed=1).validate()
    view = ForwardView.open(model, recipe, str(path))
    assert view.latent and view.error_space == "latent"
    x0 = images.encode(model, images.open_image(path, (SIZE, SIZE)).pixels)
    assert torch.allclose(view.x0, x0)
    t = 500
    a = float(view.alpha_bars[t])
    xt = view.xt(t)
    cond, uncond, _ = model.conditions(PROMPT, None, 1, SIZE, SIZE)
    with torch.no_grad():
        eps_c = model.unet(xt, torch.tensor([t]), encoder_hidden_states=cond.embeds).sample
        eps_u = model.unet(xt, torch.tensor([t]), encoder_hidden_states=uncond.embeds).sample
    b = math.sqrt(1 - a)
    p = view.point(t)
    assert torch.allclose(p.unguided_x0, (xt - b * eps_c) / math.sqrt(a), atol=1e-4)
    assert torch.allclose(p.x0, (xt - b * (eps_u + 4.0 * (eps_c - eps_u))) / math.sqrt(a), atol=1e-4)
    assert np.array_equal(p.x0_frame, to_uint8(model.decode(p.x0)))
    assert np.array_equal(p.xt_frame, to_uint8(model.decode(xt)))
    assert p.x0_frame.shape == (1, SIZE, SIZE, 3)


# -- the widget and the window --------------------------------------------------------------------------
pytest.importorskip("pytestqt")
from _gui import open_window, temp_settings  # noqa: E402,F401


@pytest.fixture
def panel(qtbot, gmm):
    from studio.gui.forward_view import ForwardPanel

    state = {"model": gmm, "recipe": Recipe(model="gmm", seed=4, label=3, guidance="cfg", scale=2.0)}
    p = ForwardPanel(lambda: state["model"], lambda: state["recipe"])
    p.state = state
    qtbot.addWidget(p)
    p.resize(420, 600)
    p.show()
    yield p
    p.shutdown()



def curve_points(panel) -> int:
    """How many points the error plot shows (pyqtgraph gives None for an empty curve)."""
    xs = panel.errorPlot.curve.getData()[0]
    return 0 if xs is None else len(xs)

def test_the_widget_opens_an_image_and_scrubs(qtbot, panel, tmp_path):
    path = str(write_picture(tmp_path / "pic.png"))
    with qtbot.waitSignal(panel.pointShown, timeout=15000) as shown:
        with qtbot.waitSignal(panel.viewOpened, timeout=15000):
            panel.open_image(path)
    view = panel.view
    assert shown.args == [0] and view.path == path
    assert "centre-cropped" in panel.notes.text() and panel.notes.isVisibleTo(panel)
    assert panel.unguidedCanvas.isVisibleTo(panel)  # CFG: the conditional x̂₀ beside the guided one
    with qtbot.waitSignal(panel.pointShown, timeout=15000, check_params_cb=lambda t: t == 640):
        panel.set_t(640)
        # x_t of a pixel model is on the canvas before its x̂₀ has arrived
        assert np.array_equal(panel.xtCanvas.frames, to_uint8(view.xt(640)))
    p = view.cached(640)
    assert np.array_equal(panel.x0Canvas.frames, p.x0_frame)
    assert np.array_equal(panel.unguidedCanvas.frames, p.unguided_frame)
    assert "t=640" in panel.levelLabel.text() and "SNR=" in panel.levelLabel.text()
    # the plot repaints at most every PLOT_MS: its points land within that
    qtbot.waitUntil(lambda: curve_points(panel) == 2, timeout=5000)
    xs, ys = panel.errorPlot.curve.getData()
    assert list(xs) == [0, 640] and ys[1] == pytest.approx(p.error)
    qtbot.waitUntil(lambda: panel.errorPlot.line.value() == 640, timeout=5000)
    evaluations = view.evaluations
    with qtbot.waitSignal(panel.pointShown, timeout=5000):
        panel.set_t(0)  # kept: shown from the cache, no evaluation
    assert view.evaluations == evaluations


def test_compute_all_fills_the_error_curve(qtbot, panel, tmp_path):
    from studio.session.forward_view import FILL_POINTS

    with qtbot.waitSignal(panel.pointShown, timeout=15000):
        panel.open_image(str(write_picture(tmp_path / "pic.png")))
    panel.compute_all()
    qtbot.waitUntil(lambda: curve_points(panel) == FILL_POINTS, timeout=30000)
    xs, ys = panel.errorPlot.curve.getData()
    assert xs[0] == 0 and xs[-1] == 999 and np.all(np.isfinite(ys))
    _, ung = panel.errorPlot.unguided.getData()
    assert len(ung) == FILL_POINTS


def test_changed_settings_open_the_image_again(qtbot, panel, tmp_path):
    with qtbot.waitSignal(panel.pointShown, timeout=15000):
        panel.open_image(str(write_picture(tmp_path / "pic.png")))
    old = panel.view
    panel.state["recipe"] = panel.state["recipe"].replace(guidance="none", scale=1.0)
    with qtbot.waitSignal(panel.viewOpened, timeout=15000):
        panel.set_t(100)
    assert panel.view is not old and not panel.view.guided and not panel.unguidedCanvas.isVisibleTo(panel)


def test_a_bad_image_keeps_the_view(qtbot, panel, tmp_path):
    with qtbot.waitSignal(panel.pointShown, timeout=15000):
        panel.open_image(str(write_picture(tmp_path / "pic.png")))
    old = panel.view
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with qtbot.waitSignal(panel.errorRaised, timeout=15000) as err:
        panel.open_image(str(bad))
    assert "not an image" in err.args[0] and "\n" not in err.args[0]
    assert panel.view is old and panel.path == old.path
    panel.set_t(3)  # the old view goes on working, and the bad file is not retried
    qtbot.waitUntil(lambda: old.cached(3) is not None, timeout=15000)
    assert panel.view is old


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels (its data is one tiny row): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")


def bad_files(tmp_path) -> list[tuple[str, str]]:
    """(path, what its one line says) for each kind of bad image file."""
    write_picture(tmp_path / "full.png", (64, 64))
    write_picture(tmp_path / "full.jpg", (64, 64))
    files = {
        "text.png": (b"just some text", "not an image"),
        "bomb.png": (png_claiming(100_000, 100_000), "decompression bomb"),
        "cut.png": ((tmp_path / "full.png").read_bytes()[:400], "damaged or truncated"),
        "cut.jpg": ((tmp_path / "full.jpg").read_bytes()[:600], "damaged or truncated"),
    }
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    out = [(str(tmp_path / "dot.png"), "at least")]
    for name, (data, says) in files.items():
        (tmp_path / name).write_bytes(data)
        out.append((str(tmp_path / name), says))
    return out


@pytest.mark.slow
def test_the_window_opens_images_runs_from_them_and_refuses_bad_ones(qtbot, tmp_path):
    from studio.session.export import export_final

    w = open_window(qtbot, steps=10, batch=1)
    w.resize(1366 - 16, 768 - 48)
    fp = w.forwardPanel
    assert ("Ctrl+I", "Open image") in w.shortcuts()
    # a plain image dropped on the window opens in the forward view
    path = str(write_picture(tmp_path / "pic.png", (16, 16)))
    with qtbot.waitSignal(fp.pointShown, timeout=15000):
        w.open_path(path)
    assert w.forwardDock.isVisible() and fp.view.path == path
    assert w.minimumSizeHint().width() <= 1366 - 16 and w.minimumSizeHint().height() <= 768 - 48

    # Denoise from here: an ordinary image-to-image run in the main view
    with qtbot.waitSignal(fp.pointShown, timeout=15000):
        fp.set_t(480)
    with qtbot.waitSignal(w.runFinished, timeout=15000) as done:
        fp.denoiseButton.click()
    traj = done.args[0]
    start = nearest_start(w.cache.model, w.current_recipe().validate(), 480)
    assert traj.recipe.init_image == path and traj.recipe.start_step == start.index
    assert traj.recipe.init_image_sha256 is not None and len(traj) == 10 - start.index
    assert "from an image" in w.mainView.header.text()
    if float(start.t).is_integer():  # the run starts from the picture the view shows at that t
        assert torch.allclose(traj.full_state(-1)["x"], fp.view.xt(int(start.t)), atol=1e-6)
    qtbot.waitUntil(lambda: not w.busy)

    # a PNG carrying a studio recipe (the run's exported image) still opens as a recipe, not as an image
    view = fp.view
    final = export_final(traj, tmp_path / "final.png")
    w.panel.stepsSpin.setValue(17)
    w.open_path(str(final))
    assert w.panel.stepsSpin.value() == 10 and fp.view is view and fp.worker.idle()
    # bad images: one line each; the run, the model and the forward view stay
    for bad, says in bad_files(tmp_path):
        with qtbot.waitSignal(w.errorShown, timeout=15000) as err:
            w.open_path(bad)
        assert says in err.args[0] and "\n" not in err.args[0], (bad, err.args[0])
        assert w.trajectory is traj and w.model_spec == "gmm" and fp.view.path == path
    w.close()
