"""The web-UI ``parameters`` text: written from a recipe, read back, and read from a web UI's own text."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from studio.session.parameters import format_parameters, parse_parameters

# a parameters text as AUTOMATIC1111's WebUI 1.10 writes it (from its infotext code: prompt, negative line,
# then "key: value" pairs separated by ", ", values with commas quoted)
WEBUI_TEXT = ('masterpiece, a cat in a hat\nNegative prompt: blurry, lowres\n'
              'Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, '
              'Model hash: abcdef1234, Model: sd15, Lora hashes: "a: 1, b: 2", Version: v1.10.1')


def recipe(**kw):
    base = dict(prompt="a red 7 on a blue background", negative_prompt="green", steps=30, sampler="dpmpp_2m",
                karras=True, guidance="cfg", scale=3.0, seed=7, width=32, height=32, model="digits-text", eta=0.0,
                guidance_rescale=0.0, label=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_reads_a_webui_text():
    p = parse_parameters(WEBUI_TEXT)
    assert p["prompt"] == "masterpiece, a cat in a hat" and p["negative_prompt"] == "blurry, lowres"
    assert (p["steps"], p["sampler"], p["karras"], p["scale"], p["seed"]) == (25, "dpmpp_2m", True, 7.5, 1234)
    assert (p["width"], p["height"]) == (512, 768)
    assert p["other"]["Lora hashes"] == "a: 1, b: 2" and p["other"]["Model"] == "sd15"


def test_round_trip():
    r = recipe()
    text = format_parameters(r)
    assert text.splitlines()[0] == r.prompt and text.splitlines()[1] == "Negative prompt: green"
    p = parse_parameters(text)
    assert (p["prompt"], p["negative_prompt"], p["steps"], p["sampler"], p["karras"], p["scale"], p["seed"],
            p["width"], p["height"]) == (r.prompt, "green", 30, "dpmpp_2m", True, 3.0, 7, 32, 32)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "heun", "dpmpp_2m", "ddpm", "langevin"])
def test_every_sampler_round_trips(sampler):
    assert parse_parameters(format_parameters(recipe(sampler=sampler, karras=False)))["sampler"] == sampler


def test_values_with_commas_survive():
    p = parse_parameters(format_parameters(recipe(model="/models/a,b")))
    assert p["other"]["Model"] == "/models/a,b"


@pytest.mark.parametrize("bad", ["", "just a prompt", "a\nSteps: many, Seed: 1"])
def test_bad_text_is_one_line_error(bad):
    with pytest.raises(ValueError) as e:
        parse_parameters(bad)
    assert "\n" not in str(e.value)
