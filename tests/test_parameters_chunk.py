"""The web-UI ``parameters`` text: written from a recipe, read back, and read from a web UI's own text."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from studio.core.samplers import SAMPLERS
from studio.session.parameters import WEBUI_SAMPLERS, format_parameters, parse_parameters, webui_sampler

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


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_round_trips(sampler, karras):
    spec = SAMPLERS[sampler]
    text = format_parameters(recipe(sampler=sampler, karras=karras))
    p = parse_parameters(text)
    assert p["sampler"] == sampler and p["warnings"] == []
    if spec.takes_karras:  # written as A1111 1.9+ writes it: the schedule in a field of its own
        assert f"Schedule type: {'Karras' if karras else 'Uniform'}" in text and p["karras"] == karras
    else:
        assert "Schedule type" not in text and "karras" not in p
    assert f"Sampler: {webui_sampler(sampler).label}," in text


def test_every_registry_sampler_has_a_web_ui_name():
    assert {w.sampler for w in WEBUI_SAMPLERS} == set(SAMPLERS)
    assert len({w.label.lower() for w in WEBUI_SAMPLERS}) == len(WEBUI_SAMPLERS)


@pytest.mark.parametrize("entry", WEBUI_SAMPLERS, ids=lambda w: w.label)
def test_every_web_ui_name_and_its_option_fields_round_trip(entry):
    """Each menu entry with its implied options, and each option the web UIs keep in a field of its own
    set off the web UI's default, comes back as it was written."""
    spec = SAMPLERS[entry.sampler]
    assert set(entry.options) | set(entry.fields) <= set(spec.options)
    chosen = dict(entry.options)
    for opt, (_, webui_default) in entry.fields.items():
        o = spec.options[opt]
        chosen[opt] = next(c for c in o.choices if c != webui_default) if o.kind == "choice" else \
            (1 if webui_default != 1 else 2) if o.kind == "int" else (0.5 if webui_default != 0.5 else 0.25)
    text = format_parameters(recipe(sampler=entry.sampler, **chosen))
    assert f"Sampler: {entry.label}," in text
    for opt, (key, _) in entry.fields.items():
        assert f"{key}: " in text
    p = parse_parameters(text)
    assert p["sampler"] == entry.sampler and {k: p[k] for k in chosen} == chosen and p["warnings"] == []


def test_a_web_ui_default_is_not_written_and_reads_as_the_web_uis():
    """A1111 writes "Eta" and "UniPC order" only off its defaults (η 1, bh1, order 3); a field that is absent
    is that default, not the studio's (UniPC bh2, order 2)."""
    text = format_parameters(recipe(sampler="euler_a", eta=1.0))
    assert "Eta" not in text
    text = format_parameters(recipe(sampler="unipc", variant="bh1", order=3))
    assert "UniPC" not in text.replace("Sampler: UniPC,", "")
    p = parse_parameters("Steps: 20, Sampler: UniPC, Schedule type: Automatic, CFG scale: 7, Seed: 1")
    assert (p["sampler"], p["variant"], p["order"], p["karras"]) == ("unipc", "bh1", 3, False)
    assert "Eta DDIM: 0.3" in format_parameters(recipe(sampler="ddim", eta=0.3))


# "Sampler: …, Schedule type: …" as A1111/Forge write them (1.9 and later), and the combined names of
# earlier versions ("DPM++ 2M Karras"), each → (studio sampler, Karras σ, options it implies)
WEBUI_SAMPLER_FIELDS = [
    ("Sampler: DPM++ 2M SDE, Schedule type: Karras", "dpmpp_2m_sde", True, {"solver_type": "midpoint"}),
    ("Sampler: DPM++ 2M SDE Karras", "dpmpp_2m_sde", True, {"solver_type": "midpoint"}),
    ("Sampler: DPM++ 2M SDE Heun, Schedule type: Karras", "dpmpp_2m_sde", True, {"solver_type": "heun"}),
    ("Sampler: DPM++ 2M SDE Heun Karras", "dpmpp_2m_sde", True, {"solver_type": "heun"}),
    ("Sampler: DPM++ 2M SDE Heun", "dpmpp_2m_sde", False, {"solver_type": "heun"}),
    ("Sampler: DPM++ 2M Karras", "dpmpp_2m", True, {}),
    ("Sampler: DPM++ 2M, Schedule type: Karras", "dpmpp_2m", True, {}),
    ("Sampler: DPM++ 2M, Schedule type: Automatic", "dpmpp_2m", True, {}),  # A1111's default for it
    ("Sampler: DPM++ 2M, Schedule type: Uniform", "dpmpp_2m", False, {}),
    ("Sampler: DPM++ 2M", "dpmpp_2m", False, {}),  # before schedules: the uniform spacing
    ("Sampler: DPM2 a Karras", "dpm2_a", True, {"eta": 1.0}),
    ("Sampler: DPM2 a, Schedule type: Automatic, Eta: 0.5", "dpm2_a", True, {"eta": 0.5}),
    ("Sampler: DPM2 Karras", "dpm2", True, {}),
    ("Sampler: DPM2", "dpm2", False, {}),
    ("Sampler: DPM++ 2S a, Schedule type: Karras", "dpmpp_2s_a", True, {"eta": 1.0}),
    ("Sampler: DPM++ 2S a Karras", "dpmpp_2s_a", True, {}),
    ("Sampler: DPM++ SDE, Schedule type: Karras", "dpmpp_sde", True, {}),
    ("Sampler: DPM++ SDE Karras", "dpmpp_sde", True, {}),
    ("Sampler: DPM++ 3M SDE, Schedule type: Karras", "dpmpp_3m_sde", True, {"eta": 1.0}),
    ("Sampler: DPM++ 3M SDE Karras", "dpmpp_3m_sde", True, {}),
    ("Sampler: LMS", "lms", False, {}),
    ("Sampler: LMS Karras", "lms", True, {}),
    ("Sampler: LMS, Schedule type: Automatic", "lms", False, {}),
    ("Sampler: Heun, Schedule type: Karras", "heun", True, {}),
    ("Sampler: Heun", "heun", False, {}),
    ("Sampler: Euler a, Schedule type: Automatic", "euler_a", False, {"eta": 1.0}),
    ("Sampler: Euler a, Eta: 0.67", "euler_a", False, {"eta": 0.67}),
    ("Sampler: Euler, Schedule type: Karras", "euler", True, {}),
    ("Sampler: UniPC, Schedule type: Karras", "unipc", True, {"variant": "bh1", "order": 3}),
    ("Sampler: UniPC, UniPC variant: bh2, UniPC order: 2", "unipc", False, {"variant": "bh2", "order": 2}),
    ("Sampler: DEIS, Schedule type: Karras", "deis", True, {}),
    ("Sampler: DDIM, Schedule type: Automatic", "ddim", None, {"eta": 0.0}),
    ("Sampler: DDIM, Eta DDIM: 0.2", "ddim", None, {"eta": 0.2}),
    ("Sampler: DDPM", "ddpm", None, {}),
]


@pytest.mark.parametrize("fields, sampler, karras, options", WEBUI_SAMPLER_FIELDS,
                         ids=[f[0] for f in WEBUI_SAMPLER_FIELDS])
def test_reads_the_web_uis_sampler_names(fields, sampler, karras, options):
    p = parse_parameters(f"a cat\nSteps: 20, {fields}, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15")
    assert (p["sampler"], p.get("karras")) == (sampler, karras) and p["warnings"] == []
    assert {k: p[k] for k in options} == options
    assert not {"Eta", "Eta DDIM", "UniPC order", "UniPC variant"} & set(p["other"])


@pytest.mark.parametrize("fields, warned", [
    ("Sampler: DPM fast", "'DPM fast'"), ("Sampler: PLMS, Schedule type: Karras", "'PLMS'"),
    ("Sampler: DPM adaptive Karras", "'DPM adaptive Karras'"), ("Sampler: DDIM CFG++", "'DDIM CFG++'")])
def test_a_web_ui_sampler_the_studio_lacks_reads_with_a_warning(fields, warned):
    p = parse_parameters(f"Steps: 20, {fields}, CFG scale: 7, Seed: 1")
    assert p["sampler"] == "dpmpp_2m"  # what A1111 itself reads for a name it lacks
    assert len(p["warnings"]) == 1 and warned in p["warnings"][0] and "\n" not in p["warnings"][0]
    assert p["karras"] == ("Karras" in fields)


@pytest.mark.parametrize("fields, karras", [
    ("Sampler: DPM++ 2M SDE, Schedule type: Exponential", False), ("Sampler: Euler, Schedule type: SGM Uniform", False),
    ("Sampler: DPM++ 2M SDE, Schedule type: Automatic", False), ("Sampler: DPM++ 3M SDE Exponential", False)])
def test_a_schedule_the_studio_lacks_reads_with_a_warning(fields, karras):
    p = parse_parameters(f"Steps: 20, {fields}, CFG scale: 7, Seed: 1")
    assert p["karras"] == karras and len(p["warnings"]) == 1 and "Uniform (Karras off)" in p["warnings"][0]
    assert p["sampler"] in ("dpmpp_2m_sde", "euler", "dpmpp_3m_sde")


def test_a_bad_option_field_is_one_line():
    with pytest.raises(ValueError, match="bad 'UniPC order' value: 'three'"):
        parse_parameters("Steps: 20, Sampler: UniPC, UniPC order: three, Seed: 1")


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


# -- an image from a web UI, opened --------------------------------------------------------------------
def _webui_png(path, settings: str):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", f"a cat\nNegative prompt: blurry\n{settings}")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a_web_ui_png_gives_its_sampler_options_and_unsets_the_others(tmp_path):
    from studio.core.samplers import OPTION_SCHEMA
    from studio.session.export import read_webui_parameters
    from studio.session.recipe import Recipe

    path = _webui_png(tmp_path / "a.png",
                      "Steps: 20, Sampler: DPM++ 2M SDE Heun Karras, CFG scale: 7, Seed: 3, Eta: 0.5")
    s = read_webui_parameters(path)
    assert (s["sampler"], s["solver_type"], s["eta"], s["karras"], s["warnings"]) == (
        "dpmpp_2m_sde", "heun", 0.5, True, [])
    assert all(s[name] is None for name in OPTION_SCHEMA if name not in ("solver_type", "eta"))
    r = Recipe(model="gmm", sampler="langevin", corrector_steps=3).replace(
        **{k: v for k, v in s.items() if k != "warnings"}).validate()
    assert r.sampler_options() == {"eta": 0.5, "solver_type": "heun", "noise_type": "per-step"}  # none of langevin's
    lacking = read_webui_parameters(_webui_png(tmp_path / "b.png", "Steps: 20, Sampler: DPM fast, Seed: 3"))
    assert lacking["sampler"] == "dpmpp_2m" and len(lacking["warnings"]) == 1
    assert lacking["warnings"][0].startswith(f"{tmp_path / 'b.png'}: the sampler 'DPM fast' is not one")


def test_the_window_opens_a_web_ui_png_with_a_sampler_it_lacks_and_says_so(qtbot, tmp_path):
    from _gui import open_window

    win = open_window(qtbot, steps=4)
    path = _webui_png(tmp_path / "plms.png", "Steps: 9, Sampler: PLMS, Schedule type: Karras, CFG scale: 3, Seed: 5")
    assert win.open_recipe(str(path)) is not None
    r = win.current_recipe()
    assert (r.sampler, r.karras, r.steps, r.seed) == ("dpmpp_2m", True, 9, 5)
    text = win.errorLabel.text()
    assert text.startswith("Warning: ") and "'PLMS' is not one the studio has" in text and "\n" not in text
    ok = _webui_png(tmp_path / "ok.png", "Steps: 9, Sampler: DPM2 a, Schedule type: Karras, CFG scale: 3, Eta: 0.5, Seed: 5")
    assert win.open_recipe(str(ok)) is not None and not win.errorLabel.isVisible()
    r = win.current_recipe()
    assert (r.sampler, r.karras, r.eta) == ("dpm2_a", True, 0.5)
