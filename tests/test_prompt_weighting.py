"""Weighted prompts, encoded as the web UIs encode them, on real (tiny) CLIP text encoders and digits-text.

The truth is a reference implementation written here from AUTOMATIC1111's rule, apart from the studio's
code: the prompt read by recursive descent into bracket groups (the grammar parse_prompt_attention
documents), each run tokenized alone, a chunk of (length − 2) tokens between start and end token padded
as the tokenizer pads, the hidden states multiplied by the weights, then rescaled to their original mean
(``sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase`` and ``sd_emphasis.EmphasisOriginal``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _models import final_x
from studio.core.guidance import Guidance
from studio.core.pipeline import load_pipeline_folder
from studio.core.prompt_weights import PromptWeightError
from text_pipelines import make_sd_pipeline, make_sdxl_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

DIGITS_TEXT = Path(__file__).resolve().parents[1] / "assets" / "models" / "digits-text"

# short enough for the tiny tokenizer (one token per character, 14 in a chunk) except the last, which is cut
TINY_PROMPTS = ["a (red:1.3) 7", "((a [b] c:1.2)) d", "\\(x\\) (y:0.5) z", "[[blue]] (cat)", "(un)(closed 7",
                "(a:-0.5) b c", "((x:2):0.25) [(y)]", "(abcdefghijklmnop:1.2) q"]
DIGITS_PROMPTS = ["a (red:1.3) 7 on a [blue] background", "a ((seven)) in [[green]] on (white:0.8)",
                  "(a (red:1.5) six on a (blue:0.6) background:1.1)", "\\(a red 7\\) on blue", "[a green 2"]


# -- the reference ------------------------------------------------------------
_WEIGHT_CLOSER = re.compile(r":\s*([+-]?\d*\.?\d+)\s*\)")


def reference_runs(prompt: str) -> list[tuple[str, float]]:
    """(text, weight) runs: bracket groups read recursively, a group's factor multiplying everything in it
    ((…) 1.1, […] 1/1.1, (…:w) w; a group left open ends with the prompt), escaped brackets literal,
    adjacent runs of equal weight merged."""
    def group(i: int, closer: str | None) -> tuple[list, int, float]:
        items: list = []
        while i < len(prompt):
            if prompt[i] == "\\" and i + 1 < len(prompt) and prompt[i + 1] in "()[]\\":
                items.append(prompt[i + 1])
                i += 2
            elif prompt[i] in "([":
                inner, i, factor = group(i + 1, ")" if prompt[i] == "(" else "]")
                items.append((factor, inner))
            elif closer == ")" and _WEIGHT_CLOSER.match(prompt, i):
                m = _WEIGHT_CLOSER.match(prompt, i)
                return items, m.end(), float(m.group(1))
            elif prompt[i] == closer:
                return items, i + 1, 1.1 if closer == ")" else 1 / 1.1
            else:
                items.append(prompt[i])
                i += 1
        return items, i, {")": 1.1, "]": 1 / 1.1, None: 1.0}[closer]

    chars: list[tuple[str, float]] = []

    def flatten(items: list, weight: float) -> None:
        for item in items:
            if isinstance(item, str):
                chars.append((item, weight))
            else:
                flatten(item[1], weight * item[0])

    flatten(group(0, None)[0], 1.0)
    runs: list[list] = []
    for ch, w in chars:
        if runs and abs(runs[-1][1] - w) < 1e-12:
            runs[-1][0] += ch
        else:
            runs.append([ch, w])
    return [(t, w) for t, w in runs] or [("", 1.0)]


def reference_embedding(prompt: str, tokenizer, encoder, penultimate: bool):
    """(z, pooled) of one encoder by A1111's rule; pooled: the encoder's projected output, or None."""
    runs = reference_runs(prompt)
    tokens, multipliers = [], []
    for ids, (_, weight) in zip(tokenizer([t for t, _ in runs], add_special_tokens=False).input_ids, runs):
        tokens += ids
        multipliers += [weight] * len(ids)
    n = tokenizer.model_max_length - 2
    tokens, multipliers = tokens[:n], multipliers[:n]
    pad = n - len(tokens)
    ids = [tokenizer.bos_token_id] + tokens + [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
    multipliers = [1.0] + multipliers + [1.0] + [1.0] * pad
    with torch.no_grad():
        out = encoder(torch.tensor([ids]), output_hidden_states=True)
    z = out.hidden_states[-2] if penultimate else out.last_hidden_state
    original_mean = z.mean()
    z = z * torch.tensor(multipliers).reshape(1, -1, 1).expand(z.shape)
    z = z * (original_mean / z.mean())
    pooled = out.text_embeds if hasattr(out, "text_embeds") else None
    return z, pooled


def test_the_reference_reads_the_documented_examples():
    runs = reference_runs("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert [t for t, _ in runs] == ["a ", "house", " ", "on", " a ", "hill", ", sun, ", "sky", "."]
    assert [w for _, w in runs] == pytest.approx([1.0, 1.573, 1.1, 1.0, 1.1, 0.55, 1.1, 1.4641, 1.1])
    assert reference_runs("\\(literal\\]") == [("(literal]", 1.0)]
    assert reference_runs("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]


# -- models ---------------------------------------------------------------------
def _biased_layer_norms(folder: Path, names: list[str]) -> Path:
    """Give the text encoders' layer norms random biases: a random-initialised CLIP's final layer norm has
    none, so its states' mean is ~0 and rescaling to it would be ill-conditioned (trained ones do)."""
    import transformers

    g = torch.Generator().manual_seed(1)
    for name in names:
        sub = folder / name
        arch = getattr(transformers, transformers.CLIPTextConfig.from_pretrained(sub).architectures[0])
        enc = arch.from_pretrained(sub)
        with torch.no_grad():
            for m in enc.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
        enc.save_pretrained(sub, safe_serialization=True)
    return folder


def _pad_with_exclamation_mark(folder: Path) -> Path:
    """SDXL's second tokenizer (OpenCLIP's, as SD 2.x's) pads with "!", not with the end token."""
    config = folder / "tokenizer_2" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pad_token": "!"}))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weighting")
    sdxl = _biased_layer_norms(make_sdxl_pipeline(root / "sdxl"), ["text_encoder", "text_encoder_2"])
    return {"sd": _biased_layer_norms(make_sd_pipeline(root / "sd"), ["text_encoder"]),
            "sdxl": _pad_with_exclamation_mark(sdxl)}


@pytest.fixture(scope="module")
def models(folders):
    return {k: load_pipeline_folder(v, torch.device("cpu"), torch.float32) for k, v in folders.items()}


@pytest.fixture(scope="module")
def digits_text():
    if not (DIGITS_TEXT / "model_index.json").is_file():
        pytest.skip("digits-text is not shipped in this checkout")
    from studio.checkpoints.models import load_model

    return load_model("digits-text", "cpu")


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-6 * want.abs().max().item()


# -- the rule ---------------------------------------------------------------------
@pytest.mark.parametrize("prompt", TINY_PROMPTS)
def test_sd_embeddings_are_the_web_uis(models, prompt):
    model = models["sd"]
    got = model.encode(prompt, 16, 16).condition
    want, _ = reference_embedding(prompt, model.tokenizers[0], model.text_encoders[0], penultimate=False)
    _close(got.embeds, want)
    assert got.pooled is None


@pytest.mark.parametrize("prompt", TINY_PROMPTS)
def test_sdxl_both_encoders_and_pooled_are_the_web_uis(models, prompt):
    model = models["sdxl"]
    got = model.encode(prompt, 16, 16).condition
    z1, _ = reference_embedding(prompt, model.tokenizers[0], model.text_encoders[0], penultimate=True)
    z2, pooled = reference_embedding(prompt, model.tokenizers[1], model.text_encoders[1], penultimate=True)
    ids = model.prompt_tokens(prompt, encoder=1).ids
    assert set(ids[ids.index(model.tokenizers[1].eos_token_id) + 1:]) <= {model.tokenizers[1].convert_tokens_to_ids("!")}
    _close(got.embeds, torch.cat([z1, z2], dim=-1))  # each encoder rescaled to its own mean, then joined
    assert torch.equal(got.pooled, pooled)  # the second encoder's, unweighted, on the same tokens


@pytest.mark.parametrize("prompt", DIGITS_PROMPTS)
def test_digits_text_embeddings_are_the_web_uis(digits_text, prompt):
    got = digits_text.encode(prompt, 32, 32).condition
    want, _ = reference_embedding(prompt, digits_text.tokenizers[0], digits_text.text_encoders[0], penultimate=False)
    _close(got.embeds, want)


def test_a_weight_moves_the_embedding_of_its_tokens_most(digits_text):
    plain = digits_text.encode("a red 7 on a blue background", 32, 32).condition.embeds
    weighted = digits_text.encode("a (red:1.5) 7 on a blue background", 32, 32).condition.embeds
    tokens = digits_text.prompt_tokens("a (red:1.5) 7 on a blue background")
    red = [i for i, w in enumerate(tokens.weights) if w == 1.5]
    change = (weighted - plain).norm(dim=-1)[0]
    assert red and change[red].min() > change[[i for i in range(len(change)) if i not in red]].max()


# -- unweighted prompts are untouched ----------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_unweighted_prompts_are_diffusers_own_encoding_bit_for_bit(folders, models, kind):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(folders[kind]), **({} if kind == "sdxl" else {"safety_checker": None}))
    for prompt in ["a red 7", "", "a cat) b", "ratio 16:9"]:  # a stray ')' and a colon are text, as there
        got = models[kind].encode(prompt, 16, 16).condition
        with torch.no_grad():
            want = pipe.encode_prompt(prompt=prompt, device=torch.device("cpu"), num_images_per_prompt=1,
                                      do_classifier_free_guidance=False)
        assert torch.equal(got.embeds, want[0])
        if kind == "sdxl":
            assert torch.equal(got.pooled, want[2])


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_weights_of_one_give_the_plain_prompt_bit_for_bit(models, kind):
    model = models[kind]
    plain, ones = model.encode("a red 7", 16, 16).condition, model.encode("(a red 7:1)", 16, 16).condition
    assert torch.equal(plain.embeds, ones.embeds)
    run = dict(guidance=Guidance("cfg", 3.0), negative_prompt="green", seed=3)
    x_plain = final_x(model, "ddim", 4, prompt="a red 7", **run)
    assert torch.equal(x_plain, final_x(model, "ddim", 4, prompt="(a red 7:1)", **run))
    assert not torch.equal(x_plain, final_x(model, "ddim", 4, prompt="a (red:1.4) 7", **run))
    # the negative prompt is weighted too
    assert not torch.equal(x_plain, final_x(model, "ddim", 4, prompt="a red 7", **{**run, "negative_prompt": "(green:2)"}))


def test_a_long_weighted_prompt_is_cut_to_one_chunk_and_said(models):
    model = models["sd"]
    assert model.truncated_text("(abcdefghijklmnop:1.2) q") == "op q"  # 14 tokens fit: a … n
    tokens = model.prompt_tokens("(abcdefghijklmnop:1.2) q")
    assert len(tokens.ids) == 16 and tokens.weights == [1.0] + [1.2] * 14 + [1.0]
    assert model.truncated_text("a (red:1.2) 7") == ""


# -- bad input --------------------------------------------------------------------
BAD = [("(cat:abc)", r"the weight 'abc' in '\(cat:abc\)' is not a number"),
       ("(cat:1.2.3)", r"the weight '1.2.3' .* is not a number"),
       ("(cat:)", r"the weight in '\(cat:\)' is missing"),
       ("(cat:150)", r"the weight 150 .* beyond ±100"),
       ("(cat:-101) dog", r"the weight -101 .* beyond ±100"),
       ("(" * 50 + "x" + ")" * 50, r"ends up weighted 117.4 \(nested brackets multiply\)"),
       ("(:1.3)", r"has weights but no words"),
       ("() []", r"has weights but no words"),
       ("a cat BREAK a dog", r"BREAK starts a new chunk"),
       ("a [cat:dog:0.5]", r"prompt editing")]


@pytest.mark.parametrize("prompt,message", BAD)
def test_bad_weights_are_one_line_errors(models, prompt, message):
    with pytest.raises(PromptWeightError, match="^negative prompt: .*" + message) as e:
        models["sd"].conditions("a red 7", prompt, 1, 16, 16)
    assert "\n" not in str(e.value)
    with pytest.raises(PromptWeightError, match="^prompt: .*" + message):
        models["sd"].conditions(prompt, None, 1, 16, 16)


def test_cli_refuses_bad_weights_in_one_line_and_notes_lenient_readings(folders, tmp_path, capsys):
    from studio.cli import main

    base = ["sample", "--model", str(folders["sd"]), "--steps", "2", "--batch", "1", "--preview", "linear"]
    assert main(base + ["--prompt", "a (red:abc) 7", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("studio: error: prompt: the weight 'abc'") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "final.png").exists()
    assert main(base + ["--prompt", "a (red 7", "--negative-prompt", "blue)", "--out", str(tmp_path / "lenient"),
                        "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "prompt: the '(' at character 3 is never closed, so it weights everything after it by 1.1" in err
    assert "negative prompt: the ')' at character 5 closes no bracket and is read as text" in err


def test_sample_with_weighted_prompts_end_to_end(folders, tmp_path, capsys):
    from PIL import Image

    from studio.cli import main
    from studio.session.parameters import parse_parameters

    out = tmp_path / "run"
    prompt, negative = "a ((red:1.3)) \\(7\\) on [blue]", "(green:0.5) [[grey]]"
    assert main(["sample", "--model", str(folders["sdxl"]), "--prompt", prompt, "--negative-prompt", negative,
                 "--sampler", "euler", "--steps", "3", "--batch", "1", "--guidance", "cfg", "--scale", "3",
                 "--preview", "linear", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    text = Image.open(out / "final.png").text["parameters"]
    read = parse_parameters(text)
    assert (read["prompt"], read["negative_prompt"]) == (prompt, negative)


# -- the parameters chunk -------------------------------------------------------------
@pytest.mark.parametrize("prompt,negative", [
    ("a (red:1.3) 7 on a [blue] background", "(green:0.5)"),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "[[lowres]], (blurry:1.2)"),
    ("\\(literal\\] and \\\\ a backslash", "\\(x\\)"),
    ("(unbalanced and a stray] bracket", "(a:-0.5) (b:100)"),
    ("two lines, (weighted:1.1)\nand (more:0.9)", "a\n(b:1.2)"),
    ("(ratio 16:9) (time: 12:30)", "Steps: 3, (not a setting:1.2)"),
])
def test_the_parameters_chunk_round_trips_weighted_prompts(prompt, negative):
    from studio.session.parameters import format_parameters, parse_parameters

    recipe = SimpleNamespace(prompt=prompt, negative_prompt=negative, steps=30, sampler="dpmpp_2m", karras=True,
                             guidance="cfg", scale=3.0, seed=7, width=32, height=32, model="digits-text", eta=0.0,
                             guidance_rescale=0.0, label=None)
    read = parse_parameters(format_parameters(recipe))
    assert (read["prompt"], read["negative_prompt"]) == (prompt, negative)
    assert read["steps"] == 30 and read["seed"] == 7


# -- the window -----------------------------------------------------------------------
def test_the_prompt_box_highlights_weights(qtbot):
    from PySide6.QtCore import QEvent, QPoint
    from PySide6.QtGui import QHelpEvent, QTextCharFormat
    from PySide6.QtWidgets import QToolTip

    from studio.gui.prompt_box import COOL, REFUSED, WARM, PromptEdit, weight_tint

    box = PromptEdit("prompt", 3)
    qtbot.addWidget(box)
    box.resize(500, 120)
    box.show()
    box.setText("a (red:1.5) 7 on [blue] (x:abc)\nand (more")

    def formats(line: int) -> dict[int, QTextCharFormat]:
        block = box.document().findBlockByNumber(line)
        return {i: QTextCharFormat(r.format) for r in block.layout().formats() for i in range(r.start, r.start + r.length)}

    first, second = formats(0), formats(1)
    warm, cool = first[3].background().color(), first[18].background().color()  # "red", "blue"
    assert (warm.red(), warm.green(), warm.blue()) == (WARM.red(), WARM.green(), WARM.blue())
    assert (cool.red(), cool.green(), cool.blue()) == (COOL.red(), COOL.green(), COOL.blue())
    assert 0 not in first and 12 not in first  # "a", "7": weight 1, untouched
    assert first[24].underlineColor() == REFUSED  # "(x:abc)": refused
    assert first[24].underlineStyle() != first[3].underlineStyle()
    assert second[4].underlineStyle() == first[24].underlineStyle()  # the '(' never closed: read leniently
    assert second[5].background().color().rgba() == weight_tint(1.1).rgba()  # "more": 1.1 to the end
    assert box.weight_at(3) == 1.5 and box.weight_at(18) == pytest.approx(1 / 1.1) and box.weight_at(0) == 1.0
    assert box.tooltip_at(4) == "weight 1.5"
    assert "is not a number" in box.tooltip_at(24)
    # a bracket on one line weights the next: editing the second line re-colours the first
    box.setText("(a\nb:1.5)")
    assert formats(0)[1].background().color().rgba() == weight_tint(1.5).rgba()
    box.setText("(a\nb:0.5)")
    assert formats(0)[1].background().color().rgba() == weight_tint(0.5).rgba()
    # hovering "red" shows its weight
    box.setText("a (red:1.5) 7")
    rect = box.cursorRect(box.textCursor())
    cursor = box.textCursor()
    cursor.setPosition(4)
    x = box.cursorRect(cursor).x() + 2
    pos = QPoint(x, rect.center().y())
    box.viewportEvent(QHelpEvent(QEvent.Type.ToolTip, pos, box.viewport().mapToGlobal(pos)))
    assert QToolTip.text() == "weight 1.5"


def test_the_window_refuses_bad_weights_in_one_line_and_notes_lenient_readings(qtbot, folders, tmp_path):
    from PySide6.QtCore import QSettings, QStandardPaths

    from studio.gui import MainWindow

    QStandardPaths.setTestModeEnabled(True)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    win = MainWindow(model=str(folders["sd"]))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.summary is not None and not win.busy, timeout=30000)
    win.panel.previewCombo.setCurrentIndex(win.panel.previewCombo.findData("linear"))
    win.panel.stepsSpin.setValue(2)
    win.panel.batchSpin.setValue(1)
    win.panel.promptEdit.setText("a red 7")
    win.panel.negativeEdit.setText("(green:1e3)")
    win.runButton.click()
    qtbot.waitUntil(lambda: win.errorLabel.isVisible() and not win.busy, timeout=30000)
    assert win.errorLabel.text().startswith("The run failed: negative prompt: the weight '1e3' in '(green:1e3)' is not a number")
    assert "\n" not in win.errorLabel.text()
    win.panel.negativeEdit.setText("green")
    win.panel.promptEdit.setText("a (red 7")
    messages = []
    win.statusBar().messageChanged.connect(messages.append)
    with qtbot.waitSignal(win.runFinished, timeout=30000):
        win.runButton.click()
    assert any("prompt: the '(' at character 3 is never closed" in m for m in messages)
