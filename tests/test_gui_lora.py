"""The window's LoRA list, VAE chooser and LoRA-weight comparison, on real widgets offscreen.

A tiny SD 1.x-like single-file checkpoint (checkpoint_files.py) and a random PEFT LoRA for it
(test_checkpoint_lora.peft_lora) written in tmp_path. The truth for a run is the command line: the
same recipe with ``--lora FILE:WEIGHT``; for a refusal, the line ``--lora`` gives for the same file.
"""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("pytestqt")

from studio.checkpoints import configs as configs_module  # noqa: E402
from studio.session.recipe import Recipe  # noqa: E402

from _gui import open_window, temp_settings  # noqa: E402,F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
SIZE, TOL = 16, 1e-5
TEXT_INFO = dict(name="t", sample_size=2, in_channels=4, pipeline="StableDiffusionPipeline", vae_scale_factor=8)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """{"peft": a LoRA for the tiny SD 1.x network, "sdxl": one whose cross-attention reads SDXL's 2048-wide
    text features (header-deep: refused before its weights matter)}."""
    from checkpoint_files import tiny_pipeline
    from test_checkpoint_lora import peft_lora, save

    root = tmp_path_factory.mktemp("loras")
    pipe = tiny_pipeline("sd1", root / ".tok")  # the tiny network's shapes: what a LoRA for it adapts
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    sdxl = {f"{key}.lora_A.weight": torch.randn(4, 2048), f"{key}.lora_B.weight": torch.randn(32, 4)}
    return {"peft": save(peft_lora(pipe, 1), root / "style.safetensors"),
            "sdxl": save(sdxl, root / "xl-style.safetensors")}


@pytest.fixture
def header_lora(tmp_path):
    """A file with a LoRA's keys and shapes (PEFT layout, SD 1.x's 768-wide cross-attention): what the list
    checks when a file is added, without building a network."""
    from test_checkpoint_lora import save

    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    return save({f"{key}.lora_A.weight": torch.randn(4, 768), f"{key}.lora_B.weight": torch.randn(32, 4)},
                tmp_path / "style.safetensors")


@pytest.fixture
def panel(qtbot):
    from studio.gui.panel import SamplerPanel

    p = SamplerPanel()
    qtbot.addWidget(p)
    p.show()
    return p


@pytest.fixture
def win(qtbot, tiny_sd1_file, monkeypatch):
    """The window on the tiny checkpoint, 2 steps of one 16×16 image."""
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", tiny_sd1_file[1])
    w = open_window(qtbot, steps=2, batch=1)
    with qtbot.waitSignal(w.modelLoaded, timeout=60000):
        w.open_path(str(tiny_sd1_file[0]))
    w.panel.promptEdit.setText("a red seven")
    w.panel.widthSpin.setValue(SIZE)
    w.panel.heightSpin.setValue(SIZE)
    return w


def run(qtbot, w):
    with qtbot.waitSignal(w.runFinished, timeout=60000) as blocker:
        w.runButton.click()
    qtbot.waitUntil(lambda: not w.busy)
    assert blocker.args[0].error is None, blocker.args[0].error
    return blocker.args[0]


def cli_final(tmp_path, recipe: Recipe, *flags) -> np.ndarray:
    """The final latents of ``studio sample --recipe`` of ``recipe`` with ``flags``."""
    from studio.cli import main

    path = tmp_path / f"recipe{len(list(tmp_path.glob('recipe*')))}.json"
    path.write_text(recipe.to_json())
    out = tmp_path / path.stem
    assert main(["sample", "--recipe", str(path), *flags, "--quiet", "--save-raw", "--out", str(out)]) == 0
    return np.load(out / "trajectory.npz")["xt"][-1]


def cli_error(capsys, tmp_path, *flags) -> str:
    """The one line ``studio sample`` refuses ``flags`` with (its "studio: error: " prefix left out)."""
    from studio.cli import main

    assert main(["sample", *flags, "--quiet", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("studio: error: "), err
    return err.removeprefix("studio: error: ")


def slider_to(entry, weight: float) -> None:
    """Move the slider as a user drags it, to ``weight``."""
    from studio.checkpoints.lora_files import WEIGHT

    entry.slider.setValue(round(weight / WEIGHT.step))


# -- the panel ------------------------------------------------------------------------------------------------------

def test_the_lora_list_and_vae_bind_to_the_recipe_of_a_text_model(qtbot, panel, header_lora, tmp_path):
    from studio.checkpoints.lora_files import WEIGHT
    from studio.core.gmm import GaussianMixtureModel
    from studio.core.model import ModelInfo
    from studio.gui.lora_list import OWN_VAE, SLIDER_RANGE

    panel.set_model_info(GaussianMixtureModel().info)
    assert not panel.modelFiles.isVisibleTo(panel)  # a pixel model takes no LoRA, no VAE
    panel.set_model_info(ModelInfo(**TEXT_INFO))
    assert panel.modelFiles.isVisibleTo(panel) and not panel.loraList.isVisibleTo(panel)  # no room while empty
    assert panel.vaeCombo.currentText() == OWN_VAE and panel.recipe().vae is None and panel.recipe().loras == []

    peft = str(header_lora)
    with qtbot.waitSignal(panel.changed):
        assert panel.loraList.add_file(peft)
    entry, = panel.loraList.entries
    assert entry.isVisibleTo(panel) and panel.recipe().loras == [f"{peft}:1"]
    with qtbot.waitSignal(panel.changed):
        slider_to(entry, 0.35)
    assert entry.spin.value() == pytest.approx(0.35) and panel.recipe().loras == [f"{peft}:0.35"]
    entry.spin.setValue(-3.5)  # beyond the slider's range: the box holds it, the slider stops at its end
    assert entry.slider.value() == entry.slider.minimum() and panel.recipe().loras == [f"{peft}:-3.5"]
    assert entry.slider.minimum() * WEIGHT.step == pytest.approx(SLIDER_RANGE[0])
    assert panel.recipe().validate().loras == [f"{peft}:-3.5"]

    folder = tmp_path / "vae"
    folder.mkdir()
    with qtbot.waitSignal(panel.changed):
        panel.vaeCombo.set_value(str(folder))
    assert panel.recipe().vae == str(folder)
    shown = Recipe(model="x", prompt="a", loras=[f"{peft}:0.5"], vae=str(folder)).validate()
    panel.set_recipe(shown)
    assert (panel.recipe(model="x").loras, panel.recipe(model="x").vae) == (shown.loras, shown.vae)
    panel.vaeCombo.set_value(None)
    assert panel.vaeCombo.currentText() == OWN_VAE and panel.recipe().vae is None

    with qtbot.waitSignal(panel.changed):
        panel.loraList.entries[0].removeButton.click()
    assert panel.recipe().loras == [] and panel.loraList.entries == []
    panel.set_model_info(GaussianMixtureModel().info)
    panel.loraList.add_file(peft)
    assert panel.recipe().loras == []  # the other kind's fields read as unset


def test_a_file_that_is_no_lora_is_refused_in_one_line_and_the_list_is_unchanged(qtbot, panel, header_lora, tmp_path):
    from test_checkpoint_lora import save

    from studio.core.model import ModelInfo

    panel.set_model_info(ModelInfo(**TEXT_INFO))
    panel.loraList.add_file(str(header_lora))
    before = panel.recipe().loras
    lycoris = save({"lora_unet_mid_block_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 4)},
                   tmp_path / "loha.safetensors")
    text = tmp_path / "notes.txt"
    text.write_text("a LoRA?")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(header_lora.read_bytes()[:-100])
    for path, needle in ((lycoris, "a LyCORIS network"), (cut, "truncated"), (text, "not a checkpoint the studio reads"),
                         (header_lora, "already in the list")):
        with qtbot.waitSignal(panel.loraList.refused) as blocker:
            assert not panel.loraList.add_file(str(path))
        line = blocker.args[0]
        assert needle in line and str(path) in line and "\n" not in line, line
        assert panel.loraList.errorLabel.text() == line and panel.loraList.errorLabel.isVisibleTo(panel)
        assert panel.recipe().loras == before
    panel.loraList.entries[0].removeButton.click()
    assert not panel.loraList.errorLabel.isVisibleTo(panel)  # the user's next action clears it


# -- runs in the window ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_at_the_sliders_weight_is_the_clis_and_a_new_weight_reloads_nothing(qtbot, win, loras, tmp_path):
    from studio.checkpoints.lora import loaded_loras

    peft = str(loras["peft"])
    assert win.panel.modelFiles.isVisibleTo(win.panel)
    assert win.panel.loraList.add_file(peft)
    entry = win.panel.loraList.entries[0]
    slider_to(entry, 0.5)
    half = run(qtbot, win)
    assert half.recipe.loras == [f"{peft}:0.5"]
    plain = half.recipe.replace(loras=[], branch=None)
    cli = cli_final(tmp_path, plain, "--lora", f"{peft}:0.5")
    assert np.abs(half.final().numpy() - cli).max() <= TOL

    model, state = win.cache.model, loaded_loras(win.cache.model)
    loads = state.loads
    slider_to(entry, 2.0)
    two = run(qtbot, win)
    assert two.recipe.loras == [f"{peft}:2"]
    assert win.cache.model is model and state.loads == loads  # the same model object, no file loaded again
    assert torch.equal(two.full_state(-1)["x"], half.full_state(-1)["x"])  # the same initial latents
    assert (two.final() - half.final()).abs().max() > 100 * TOL  # and the weight changed the result


@pytest.mark.slow
def test_a_lora_for_another_family_is_refused_with_the_clis_line(qtbot, win, loras, tiny_sd1_file, tmp_path, capsys):
    path = tiny_sd1_file[0]
    before = win.panel.recipe().loras
    common = ["--model", str(path), "--prompt", "a", "--steps", "2", "--width", str(SIZE), "--height", str(SIZE)]
    for bad, needle in ((loras["sdxl"], "a LoRA for Stable Diffusion XL base"),  # an SDXL LoRA on SD 1.x
                        (path, "a Stable Diffusion 1.x checkpoint, not a LoRA")):  # the model's own file
        with qtbot.waitSignal(win.panel.loraList.refused) as blocker:
            assert not win.panel.loraList.add_file(str(bad))
        assert needle in blocker.args[0]
        assert blocker.args[0] == cli_error(capsys, tmp_path, *common, "--lora", str(bad))
        assert win.panel.recipe().loras == before and not win.busy


@pytest.mark.slow
def test_a_branch_from_step_k_at_another_weight(qtbot, win, loras):
    from studio.checkpoints.lora import loaded_loras
    from studio.session.runner import ModelCache, execute

    peft = str(loras["peft"])
    win.panel.stepsSpin.setValue(4)
    win.panel.loraList.add_file(peft)
    parent = run(qtbot, win)
    model, loads = win.cache.model, loaded_loras(win.cache.model).loads
    win.mainView.scrubber.setValue(2)
    slider_to(win.panel.loraList.entries[0], 0.0)
    with qtbot.waitSignal(win.branchFinished, timeout=60000) as blocker:
        win.branchButton.click()
    child = blocker.args[0]
    qtbot.waitUntil(lambda: not win.busy)
    assert child.recipe.loras == [f"{peft}:0"] and child.recipe.branch["parent"]["loras"] == [f"{peft}:1"]
    assert win.cache.model is model and loaded_loras(model).loads == loads
    assert torch.equal(child.full_state(-1)["x"], parent.full_state(1)["x"])  # continued from step 2
    # the truth: the branch's recipe replayed on a freshly opened model (the parent at 1, the rest at 0)
    replay = execute(Recipe.from_json(child.recipe.to_json()), ModelCache())
    assert (replay.final() - child.final()).abs().max() <= TOL
    assert (child.final() - parent.final()).abs().max() > 100 * TOL


@pytest.mark.slow
def test_a_vae_chosen_in_the_window_is_recorded_and_a_bad_one_refused_in_one_line(qtbot, win, loras, tmp_path):
    from text_pipelines import tiny_vae

    own = run(qtbot, win)
    own_image = own.decodes.final()
    model = win.cache.model
    win.panel.vaeCombo.set_value(str(loras["peft"]))  # a LoRA given as the VAE
    with qtbot.waitSignal(win.errorShown, timeout=60000) as blocker:
        win.runButton.click()
    qtbot.waitUntil(lambda: not win.busy)
    assert "a LoRA, not a VAE; give it with --lora" in blocker.args[0] and "\n" not in blocker.args[0]
    assert win.cache.model is model
    torch.manual_seed(3)
    folder = tmp_path / "vae"
    tiny_vae().save_pretrained(str(folder))  # other weights, the same shapes and scaling
    win.panel.vaeCombo.set_value(str(folder))
    swapped = run(qtbot, win)
    assert swapped.recipe.vae == str(folder) and win.cache.model is model
    assert torch.equal(swapped.final(), own.final())  # a VAE decodes: the latents are the same
    assert np.abs(swapped.decodes.final().astype(int) - own_image).max() > 8  # decoded by the chosen VAE


# -- comparing weights on the same latents --------------------------------------------------------------------------

def test_the_lora_weight_preset_makes_rows_that_differ_only_in_that_weight(qtbot, header_lora, tmp_path):
    from studio.core.model import ModelInfo
    from studio.gui.compare import LORA_WEIGHTS, CompareDialog, label_for
    from studio.gui.jobs import ModelSummary

    other = str(tmp_path / "detail.safetensors")
    base = Recipe(model="x", prompt="a", sampler="dpmpp_2m", karras=True, scale=4.0,
                  loras=[f"{header_lora}:0.8", f"{other}:1.5"]).validate()
    summary = ModelSummary("x", ModelInfo(**TEXT_INFO), "cpu", "float32", np.arange(3.0), np.zeros(3), np.ones(3))
    dlg = CompareDialog(base, summary)
    qtbot.addWidget(dlg)
    assert dlg.presetCombo.count() == 3  # the samplers, and each LoRA's weights
    dlg.apply_preset(1)  # the second LoRA
    recipes = dlg.recipes()
    assert [r.loras for r in recipes] == [[f"{header_lora}:0.8", f"{other}:{w:g}"] for w in LORA_WEIGHTS]
    rest = [{k: v for k, v in r.to_dict().items() if k != "loras"} for r in recipes]
    assert all(d == rest[0] for d in rest) and rest[0] == {k: v for k, v in base.resolved().to_dict().items()
                                                           if k != "loras"}
    assert len({label_for(r) for r in recipes}) == len(recipes)  # the canvases say which weight is which
    _, spin = dlg.rows[1].loras[1]
    spin.setValue(0.25)  # the user edits a weight
    assert dlg.recipes()[1].loras[1] == f"{other}:0.25"
    dlg.apply_preset("samplers")
    assert len(dlg.rows) == 4 and all(r.loras == base.loras for r in dlg.recipes())


@pytest.mark.slow
def test_compared_weights_start_from_the_same_latents(qtbot, win, loras):
    from studio.checkpoints.lora import loaded_loras
    from studio.gui.compare import CompareDialog

    win.panel.loraList.add_file(str(loras["peft"]))
    plain = win.current_recipe().replace(loras=[])
    dlg = CompareDialog(win.current_recipe().validate(), win.summary, win)
    qtbot.addWidget(dlg)
    dlg.apply_preset(0)
    model = win.cache.model
    with qtbot.waitSignal(dlg.compareFinished, timeout=60000) as blocker:
        dlg.run()
    trajs = blocker.args[0]
    assert [t.recipe.loras[0].rsplit(":", 1)[1] for t in trajs] == ["0", "0.5", "1"]
    assert all(torch.equal(t.full_state(-1)["x"], trajs[0].full_state(-1)["x"]) for t in trajs)
    assert min((a.final() - b.final()).abs().max() for a, b in zip(trajs, trajs[1:])) > 100 * TOL
    assert win.cache.model is model and loaded_loras(model).loads == 1  # one load, three weights
    win.panel.set_recipe(plain)
    without = run(qtbot, win)
    assert (without.final() - trajs[0].final()).abs().max() <= TOL  # weight 0 is no LoRA
