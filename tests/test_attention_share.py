"""The attention-share measurement (studio/evaluation/attention_share.py): the share of a map's mass on the
digit's pixels against hand-computed cases, the token roles of the three word orders read by meaning,
and one small run on the shipped digits-text.

Truths: bilinear upsampling (align_corners=False) of a step edge is worked out by hand below; the token
positions are the shipped tokenizer's own tokens of each prompt, written out.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from studio.evaluation.attention_share import (
    DEFAULT_MODEL,
    PROMPT_FORMS,
    ShareError,
    form_prompts,
    last_third_start,
    main,
    mass_on,
    normalised_maps,
    prompt_words,
    summarise,
    token_roles,
    word_roles,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")


# ----------------------------------------------------------------------------- the share
def half_mask(left: bool) -> np.ndarray:
    m = np.zeros((1, 32, 32), dtype=bool)
    m[..., :16] = True
    return m if left else ~m


def test_a_step_edge_upsampled_bilinearly_puts_the_hand_computed_share_on_the_mask():
    # 8×8 latent map, 1 on the left four columns, 0 on the right: upsampled to 32 columns with
    # align_corners=False, pixel j samples x = (j + 0.5)/4 - 0.5; x in (3, 4) for j = 14..17, where the
    # value is 4 - x: 0.875, 0.625, 0.375, 0.125; left of that 1, right of it 0. A row sums to
    # 14 + 0.875 + 0.625 + 0.375 + 0.125 = 16, of which 14 + 0.875 + 0.625 = 15.5 is on the left half.
    latent = np.zeros((1, 8, 8), dtype=np.float32)
    latent[:, :, :4] = 1.0
    row = normalised_maps(latent, (32, 32))[0, 0] * 32  # one row, as a share of the map per row
    expected = np.r_[np.ones(14), 0.875, 0.625, 0.375, 0.125, np.zeros(14)] / 16
    assert np.allclose(row, expected, atol=1e-6)
    assert mass_on(latent, half_mask(True))[0] == pytest.approx(15.5 / 16, abs=1e-6)
    assert mass_on(latent, half_mask(False))[0] == pytest.approx(0.5 / 16, abs=1e-6)


def test_a_uniform_map_gives_the_masks_area_and_the_scale_of_a_map_does_not_matter():
    rng = np.random.default_rng(0)
    mask = rng.random((3, 32, 32)) < np.array([0.1, 0.3, 0.6])[:, None, None]
    flat = np.full((3, 8, 8), 0.02, dtype=np.float32)
    assert np.allclose(mass_on(flat, mask), mask.mean(axis=(1, 2)), atol=1e-6)
    maps = rng.random((3, 5, 8, 8)).astype(np.float32)  # (N, steps, h, w)
    assert np.allclose(mass_on(maps, mask), mass_on(7.5 * maps, mask), atol=1e-6)
    assert mass_on(maps, mask).shape == (3, 5)
    up = normalised_maps(maps, (32, 32))
    assert np.allclose(up.sum(axis=(-2, -1)), 1.0, atol=1e-5)


def test_summary_averages_over_steps_then_samples_and_the_last_third_apart():
    # 2 samples × 6 steps: the last third is steps 4 and 5 (0-based)
    assert last_third_start(6) == 4 and last_third_start(50) == 34 and last_third_start(1) == 0
    shares = np.array([[0.1, 0.1, 0.1, 0.1, 0.7, 0.7],
                       [0.3, 0.3, 0.3, 0.3, 0.5, 0.5]])
    area = np.array([0.2, 0.2])
    s = summarise(shares, area, last_third_start(6))
    assert s["all_steps"]["on_digit"] == pytest.approx((0.3 + 11 / 30) / 2, abs=1e-4)
    assert s["last_third"]["on_digit"] == pytest.approx(0.6, abs=1e-4)
    assert s["last_third"]["on_background"] == pytest.approx(0.4, abs=1e-4)
    assert s["last_third"]["lift"] == pytest.approx(3.0, abs=1e-3)
    assert s["last_third"]["sem"] == pytest.approx(0.1, abs=1e-4)  # std (ddof 1) 0.1414 / √2


# ----------------------------------------------------------------------------- roles
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(DEFAULT_MODEL / "tokenizer"))


# the shipped tokenizer's tokens (start token at 0):
#   canonical         <s> a red 1 on a grey background </s>
#   background_first  <s> on a grey background , a red 1 </s>
#   colour_after      <s> a 1 in red on grey </s>
ROLE_POSITIONS = {
    "canonical": {"digit": [3], "fg_colour": [2], "bg_colour": [6], "background_word": [7]},
    "background_first": {"digit": [8], "fg_colour": [7], "bg_colour": [3], "background_word": [4]},
    "colour_after": {"digit": [2], "fg_colour": [4], "bg_colour": [6]},
}


@pytest.mark.parametrize("form", list(PROMPT_FORMS))
def test_token_roles_follow_meaning_in_each_word_order(tokenizer, form):
    from studio.data.captions import COLOUR_NAMES

    prompt = form_prompts(form, np.array([[1, COLOUR_NAMES.index("red"), COLOUR_NAMES.index("grey")]]))[0]
    roles = token_roles(tokenizer, prompt)
    assert roles == ROLE_POSITIONS[form]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)
    assert tokens[roles["fg_colour"][0]] == "red</w>" and tokens[roles["bg_colour"][0]] == "grey</w>"
    assert tokens[roles["digit"][0]] == "1</w>"


@pytest.mark.parametrize("prompt, fg, bg", [
    ("on grey, a bold red six", "red", "grey"),
    ("six, red on a grey background", "red", "grey"),
    ("the digit 6 in red on grey", "red", "grey"),
    ("a red 6", "red", None),
    ("on a blue background", None, "blue"),
])
def test_word_roles_of_the_training_templates(prompt, fg, bg):
    words = prompt_words(prompt)
    roles = word_roles(words)
    assert (words[roles["fg_colour"]] if "fg_colour" in roles else None) == fg
    assert (words[roles["bg_colour"]] if "bg_colour" in roles else None) == bg


def test_prompts_with_two_digits_or_two_digit_colours_are_refused_in_one_line():
    with pytest.raises(ShareError, match="names 2 digits"):
        word_roles(prompt_words("a red 1 and a 2 on grey"))
    with pytest.raises(ShareError, match="2 colours for the digit"):
        word_roles(prompt_words("a red green 1 on grey"))


# ----------------------------------------------------------------------------- command
def test_command_refuses_a_folder_without_a_pipeline_in_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no model_index.json" in err


def test_report_refuses_a_file_it_did_not_write(tmp_path, capsys):
    f = tmp_path / "other.json"
    f.write_text(json.dumps({"results": []}))
    assert main(["--report", str(f)]) == 2
    assert "not results of this command" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_triples_on_digits_text_end_to_end(tmp_path, capsys):
    from studio.evaluation.attention_share import sample_with_attention
    from studio.evaluation.text_eval import generate, held_in_prompts, load_pipeline

    out = tmp_path / "share.json"
    assert main(["--model", str(DEFAULT_MODEL), "--n", "2", "--steps", "6", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [f["form"] for f in res["forms"]] == list(PROMPT_FORMS)
    for f in res["forms"]:
        assert f["n"] == 2 and set(f["roles"]) >= {"digit", "fg_colour", "bg_colour"}
        assert 0 < f["digit_area"]["mean"] < 1
        for v in f["roles"].values():
            for span in ("all_steps", "last_third"):
                assert 0 <= v[span]["on_digit"] <= 1
                assert v[span]["on_digit"] + v[span]["on_background"] == pytest.approx(1, abs=1e-3)
            assert sum(g["n"] for g in v["by_correctness"].values()) == 2
    assert "background_word" not in res["forms"][2]["roles"]  # "a 1 in red on grey" has no such word
    table = main(["--report", str(out)])
    assert table == 0 and "| digits-text |" in capsys.readouterr().out

    # the samples are text_eval's (the card's evaluation): capture changes nothing
    pipe = load_pipeline(DEFAULT_MODEL)
    prompts = held_in_prompts(2, 0)[0]
    captured = sample_with_attention(pipe, prompts, 3.0, steps=3)
    assert np.array_equal(captured.images, generate(pipe, prompts, 3.0, steps=3))
    # the maps kept are the conditional branch's: at the first step both guidance scales see the same x_T
    # and prompt, and without guidance there is only the conditional branch
    alone = sample_with_attention(pipe, prompts, 1.0, steps=3)
    assert np.allclose(captured.maps[:, 0], alone.maps[:, 0], atol=1e-5)
    assert not np.allclose(captured.maps[:, 1], captured.maps[:, 0], atol=1e-3)
