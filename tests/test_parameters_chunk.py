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


# -- what reaches the PNG text chunks --------------------------------------------------------------
def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG file, read by the format's own framing."""
    import struct

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        out.append((data[i + 4:i + 8], data[i + 8:i + 8 + n]))
        i += 12 + n
    return out


@pytest.mark.parametrize("control", ["\x00", "\x1b", "\x7f", "\x85", "\r"])
def test_a_prompt_with_a_control_character_is_refused_by_the_recipe(control):
    from studio.session.recipe import Recipe, RecipeError

    for field in ("prompt", "negative_prompt"):
        kw = {"prompt": "a cat", field: f"a{control}cat"}
        with pytest.raises(RecipeError) as e:
            Recipe(model="digits-text", **kw).validate()
        msg = str(e.value)
        assert msg.startswith(f"{field}: holds the control character U+{ord(control):04X} at character 2") and \
            "\n" not in msg


def test_line_breaks_tabs_and_any_script_are_prompt_text():
    from studio.session.recipe import Recipe, RecipeError

    r = Recipe(model="digits-text", prompt="ein grüner Hund\n\tauf Gras, 緑の犬 🐕").validate()
    assert r.prompt.endswith("🐕")
    with pytest.raises(RecipeError, match="lone surrogate U\\+D800"):
        Recipe(model="digits-text", prompt="a\ud800").validate()


def test_a_recipe_file_with_a_nul_in_its_prompt_is_one_line(tmp_path):
    from studio.session.recipe import Recipe, RecipeError

    path = tmp_path / "r.json"
    path.write_text('{"model": "digits-text", "prompt": "a red 7\\u0000 and more"}')
    with pytest.raises(RecipeError) as e:
        Recipe.load(path)
    assert str(e.value) == f"{path}: prompt: holds the control character U+0000 at character 8; a prompt is plain " \
                           "text (line breaks and tabs allowed): remove it"


def test_text_that_is_not_latin_1_is_written_as_itxt_and_reads_back(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from studio.session.output import png_bytes_info, save_png

    params = format_parameters(recipe(prompt="緑の 7 on a gelb background", negative_prompt="grün"))
    path = tmp_path / "a.png"
    save_png(path, np.zeros((4, 4, 3), np.uint8), '{"prompt": "\\u7dd1"}', parameters=params)
    chunks = {bytes(d.split(b"\0", 1)[0]): t for t, d in _chunks(path.read_bytes()) if t in (b"tEXt", b"iTXt")}
    assert chunks == {b"recipe": b"tEXt", b"parameters": b"iTXt", b"Software": b"tEXt"}
    with Image.open(path) as im:
        assert im.text["parameters"] == params and im.text["recipe"] == '{"prompt": "\\u7dd1"}'
    latin = format_parameters(recipe(prompt="un chien vert à pois"))
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, format="PNG", pnginfo=png_bytes_info("{}", latin))
    assert [t for t, d in _chunks(buf.getvalue()) if d.startswith(b"parameters\0")] == [b"tEXt"]
    with pytest.raises(ValueError, match="NUL"):
        png_bytes_info("{}", "a\x00b")
