"""The text-to-image model digits-text: captions, tokenizer, training, export, evaluation readers.

Oracles: transformers' CLIPTokenizer (it runs the BPE on the files we write), diffusers'
StableDiffusionPipeline (it loads and samples the exported folder unchanged), the data
generator's own parameters (every caption and every colour is checked against them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from studio.data import captions as C
from studio.evaluation import text_eval as E
from studio.training.tokenizer import BOS, EOS, learn_merges, load_tokenizer, write_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "models" / "digits-text"


# ----------------------------------------------------------------------------- captions
def _check_caption_true(cap: str, attrs) -> None:
    digit, fg, bg, font = (int(v) for v in attrs)
    words = cap.replace(",", " ").split()
    colours = [w for w in words if w in C.COLOUR_NAMES]
    assert set(colours) <= {C.COLOUR_NAMES[fg], C.COLOUR_NAMES[bg]}, cap
    if "on" in words:  # the colour after "on" (and an optional "a") is the background
        after = [w for w in words[words.index("on") + 1:] if w != "a"]
        assert after[0] == C.COLOUR_NAMES[bg], cap
        before = [w for w in words[:words.index("on")] if w in C.COLOUR_NAMES]
        assert before in ([], [C.COLOUR_NAMES[fg]]), cap
    elif colours:
        assert colours == [C.COLOUR_NAMES[fg]], cap
    digits = [w for w in words if w.isdigit() or w in C.DIGIT_WORDS]
    assert all(w in (str(digit), C.DIGIT_WORDS[digit]) for w in digits), cap
    styles = [w for w in words if w in C.STYLE_WORDS]
    assert styles in ([], [C.FONT_STYLE[C.FONT_NAMES[font]]]), cap


@pytest.mark.parametrize("orders", C.CAPTION_ORDERS)
def test_every_caption_is_true_of_its_image_parameters(orders):
    rng = np.random.default_rng(0)
    attrs = C.sample_attributes(3000, rng, "all")
    seen_templates, background_first = set(), 0
    for a in attrs:
        cap = C.caption(a, rng, orders=orders)
        _check_caption_true(cap, a)
        seen_templates.add(len(cap.split()))
        words = cap.replace(",", " ").split()
        fg, bg = C.COLOUR_NAMES[a[1]], C.COLOUR_NAMES[a[2]]
        background_first += fg in words and bg in words and words.index(bg) < words.index(fg)
    assert len(seen_templates) > 4  # full and partial templates both occur
    # fixed orders never name the background before the digit's colour; varied ones do, about 1 time in 5
    assert (background_first == 0) if orders == "fixed" else (0.1 < background_first / len(attrs) < 0.35)


def test_fixed_caption_orders_draw_the_captions_v8_was_trained_on():
    """"fixed" is the default and draws exactly what the templates of v8 give (the same random stream)."""
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    attrs = C.sample_attributes(300, np.random.default_rng(6), "all")
    for row in attrs:
        cap = C.caption(row, a)
        assert cap == C.caption(row, b, orders="fixed")
        assert any(_matches(t, cap) for t in C.FULL_TEMPLATES + C.PARTIAL_TEMPLATES), cap
    with pytest.raises(ValueError, match="caption orders"):
        C.caption(attrs[0], a, orders="backwards")


def _matches(template: str, cap: str) -> bool:
    import re
    pattern = re.escape(template)
    for field in ("d", "fg", "bg"):
        pattern = pattern.replace(re.escape("{" + field + "}"), r"\w+")
    pattern = pattern.replace(re.escape("{style}"), r"(?:\w+ )?")
    return re.fullmatch(pattern, cap) is not None


def test_colour_pairs_are_distinct_and_readable():
    for f, b in C.ALLOWED_PAIRS:
        assert f != b
        assert np.linalg.norm(np.subtract(C.PALETTE[f], C.PALETTE[b])) >= C.MIN_PAIR_DISTANCE
    # the jitter cube around a colour never reaches halfway to another palette colour
    d = np.linalg.norm(C.PALETTE_RGB[:, None] - C.PALETTE_RGB[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() / 2 > C.JITTER * np.sqrt(3)
    for digit, fg in C.HELD_OUT:  # every held-out pair can be rendered
        assert any(f == fg for f, _ in C.ALLOWED_PAIRS)


def test_held_out_pairs_never_in_training_split():
    rng = np.random.default_rng(1)
    train = C.sample_attributes(4000, rng, "train")
    pairs = {(int(d), C.COLOUR_NAMES[f]) for d, f, _, _ in train}
    assert not pairs & C.HELD_OUT_SET
    assert len(pairs) == 10 * len(C.COLOUR_NAMES) - len(C.HELD_OUT)  # everything else occurs
    held = C.sample_attributes(500, rng, "held_out")
    assert {(int(d), C.COLOUR_NAMES[f]) for d, f, _, _ in held} == C.HELD_OUT_SET
    assert abs(len(C.HELD_OUT) / (10 * len(C.COLOUR_NAMES)) - 0.1) < 0.02


def test_captioned_dataset_deterministic_and_render_colours_near_names():
    a_img, a_attr = C.make_captioned_dataset(50, seed=3)
    b_img, b_attr = C.make_captioned_dataset(50, seed=3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_attr, b_attr)
    assert np.bincount(a_attr[:, 0], minlength=10).tolist() == [5] * 10
    rng = np.random.default_rng(0)
    for name in C.COLOUR_NAMES:
        c = np.stack([C.render_colour(name, rng) for _ in range(200)])
        assert np.abs(c - np.array(C.PALETTE[name])).max() <= C.JITTER
    with pytest.raises(ValueError, match="not an allowed colour pair"):
        C.render_captioned(1, "red", "red", 0, rng)


# ----------------------------------------------------------------------------- readers
def test_colour_reader_on_flat_synthetic_images():
    img = np.zeros((2, 32, 32, 3), np.uint8)
    img[0] = C.PALETTE["blue"]
    img[0, 10:22, 12:20] = C.PALETTE["red"]
    img[1] = C.PALETTE["white"]
    img[1, 4:28, 14:18] = C.PALETTE["black"]
    fg, bg, mask = E.read_colours(img)
    assert [C.COLOUR_NAMES[i] for i in fg] == ["red", "black"]
    assert [C.COLOUR_NAMES[i] for i in bg] == ["blue", "white"]
    assert mask[0, 15, 15] == 1.0 and mask[0, 0, 0] == 0.0


def test_readers_real_data_floor():
    """Rendered images with known captions are read right: the ceiling any model is held to."""
    ev = E.load_digit_reader()
    for split in ("train", "held_out"):
        images, attrs = C.make_captioned_dataset(300, seed=E.REAL_SEED, split=split)
        r = E.score(ev, images, attrs[:, 0], attrs[:, 1], attrs[:, 2])
        assert r["fg_accuracy"] == 1.0 and r["bg_accuracy"] == 1.0, (split, r)
        assert r["digit_accuracy"] >= 0.98, (split, r)


# ----------------------------------------------------------------------------- tokenizer
def test_bpe_merges_assemble_every_word():
    words = C.vocabulary()
    merges = learn_merges(words)
    # replay the merges in rank order (CLIP's bpe()) on each word: one symbol each
    for w in words:
        sym = list(w[:-1]) + [w[-1] + "</w>"]
        for a, b in merges:
            i = 0
            while i < len(sym) - 1:
                if sym[i] == a and sym[i + 1] == b:
                    sym[i:i + 2] = [a + b]
                i += 1
        assert sym == [w + "</w>"]


def test_clip_tokenizer_loads_offline_and_covers_every_caption(tmp_path):
    tok = load_tokenizer(write_tokenizer(tmp_path / "tok", C.vocabulary()))
    files = {p.name for p in (tmp_path / "tok").iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= files
    assert tok.model_max_length == 20
    unk = tok.convert_tokens_to_ids(EOS)
    rng = np.random.default_rng(0)
    attrs = C.sample_attributes(300, rng, "all")
    for a in attrs:
        cap = C.caption(a, rng)
        ids = tok(cap).input_ids
        n_words = len(cap.replace(",", " , ").split())
        assert ids[0] == tok.convert_tokens_to_ids(BOS) and ids[-1] == unk
        assert len(ids) == n_words + 2 and unk not in ids[1:-1], cap  # one known token per word
        assert len(ids) <= tok.model_max_length
    assert tok.convert_ids_to_tokens(tok("a red 7 on a blue background").input_ids[1:-1]) == [
        "a</w>", "red</w>", "7</w>", "on</w>", "a</w>", "blue</w>", "background</w>"]
    assert tok("red !").input_ids[2] == unk  # a character outside the alphabet is unknown
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]


# ----------------------------------------------------------------------------- training + export
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from studio.training.text_diffusion import train_text_diffusion
    from studio.training.text_model import TINY_TEXT_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG
    from studio.training.vae_train import train_vae

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("digits_text")
    cache = root / "cache"
    vs = train_vae(root / "vae", steps=3, batch_size=4, dataset_n=40, dataset_cache=cache,
                   vae_config=TINY_VAE_CONFIG, checkpoint_every=0, warmup_steps=1)
    kw = dict(batch_size=4, dataset_n=40, dataset_cache=cache, unet_config=TINY_UNET_CONFIG,
              text_config=TINY_TEXT_CONFIG, checkpoint_every=2, grid_per_prompt=0, warmup_steps=1)
    s1 = train_text_diffusion(root / "a", vs["export"], steps=4, **kw)
    train_text_diffusion(root / "b", vs["export"], steps=2, export=False, **kw)
    s2 = train_text_diffusion(root / "b", vs["export"], steps=4, **kw)  # resumed at step 2
    return root, s1, s2


@pytest.mark.slow
def test_training_resumes_exactly(tiny_export):
    from safetensors.torch import load_file

    root, s1, s2 = tiny_export
    assert s1["step"] == s2["step"] == 4
    a = load_file(str(root / "a" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(root / "b" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    # same data, captions, noise and schedule; equal to float rounding (the optimizer state
    # reloaded from safetensors takes a different summation order than the one never saved)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_scaling_factor_is_inverse_latent_std(tiny_export):
    from safetensors.torch import load_file

    from studio.training.text_diffusion import latent_scaling_factor

    root, s1, _ = tiny_export
    cfg = json.loads((root / "a" / "final" / "vae" / "config.json").read_text())
    lat = load_file(str(root / "a" / "latents.safetensors"))
    assert cfg["scaling_factor"] == pytest.approx(s1["scaling_factor"])
    assert cfg["scaling_factor"] == pytest.approx(latent_scaling_factor(lat["mean"], lat["std"]))
    g = torch.Generator().manual_seed(0)
    z = lat["mean"] + lat["std"] * torch.randn(lat["mean"].shape, generator=g)
    assert (z * cfg["scaling_factor"]).std().item() == pytest.approx(1.0, rel=1e-4)


def _check_pipeline_folder(folder: Path, steps: int = 2):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    assert isinstance(pipe.scheduler, DDIMScheduler)
    sc = pipe.scheduler.config
    assert (sc.beta_schedule, sc.beta_start, sc.beta_end, sc.clip_sample, sc.set_alpha_to_one, sc.steps_offset) == (
        "scaled_linear", 0.00085, 0.012, False, False, 1)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red 7 on a blue background", negative_prompt="green", num_inference_steps=steps,
               guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    return pipe


def test_export_loads_in_plain_diffusers_and_samples(tiny_export):
    from studio.training.text_model import encode_prompts

    root, _, _ = tiny_export
    pipe = _check_pipeline_folder(root / "a" / "final")
    # the training-time text conditioning is exactly the pipeline's
    prompts = ["a red 7 on a blue background", ""]
    ours = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts)
    theirs, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_cli_parses_text_model_commands():
    import argparse

    from studio.training import cli_train

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    cli_train.add_train_parser(sub)
    a = p.parse_args(["train", "text-diffusion", "--out", "x", "--vae", "v", "--time-limit-min", "3"])
    cfg = cli_train.config_from_args(a)
    assert a.trainer == "text-diffusion" and cfg.vae_dir == "v" and cfg.time_limit_s == 180.0
    assert cfg.p_uncond == 0.1  # the trainer's declared default
    a = p.parse_args(["train", "text-diffusion", "--out", "x", "--p-uncond", "0.2"])
    assert cli_train.config_from_args(a).p_uncond == 0.2
    with pytest.raises(ValueError, match="--vae"):
        cli_train.cmd_train(p.parse_args(["train", "text-diffusion", "--out", "x"]))
    with pytest.raises(ValueError, match="--decoder-only needs --init-from"):
        cli_train.cmd_train(p.parse_args(["train", "vae", "--out", "x", "--decoder-only"]))
    with pytest.raises(ValueError, match="no config.json"):
        cli_train.cmd_train(p.parse_args(["train", "vae", "--out", "x", "--init-from", "/nonexistent"]))
    assert not Path("x").exists()  # refused before anything is written


@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="digits-text not shipped yet")
def test_shipped_digits_text_model():
    from studio.core.loading import sha256_file

    _check_pipeline_folder(SHIPPED)
    for line in (SHIPPED / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        assert sha256_file(SHIPPED / name) == digest, name
    assert sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()) <= 20 * 2 ** 20
    rec = json.loads((SHIPPED / "recommended.json").read_text())
    assert rec["cfg_scale"] == 3 and rec["prompt"] == "a red 7 on a blue background"



@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason="digits-text not shipped yet")
@pytest.mark.slow
def test_shipped_digits_text_draws_what_the_prompt_says():
    """The shipped model, sampled by plain diffusers, draws the digit and the colours asked for
    (read back from the pixels by the readers whose floor on real images is 100 %); a small
    version of `studio eval`'s held-in w = 3 setting (the model card has n = 500)."""
    torch.set_num_threads(1)
    prompts, rows = E.held_in_prompts(30, seed=11)
    images = E.generate(E.load_pipeline(SHIPPED), prompts, 3.0, steps=25, seed=11, batch=30)
    r = E.score(E.load_digit_reader(), images, rows[:, 0], rows[:, 1], rows[:, 2])
    assert r["digit_accuracy"] >= 0.7 and r["fg_accuracy"] >= 0.8 and r["bg_accuracy"] >= 0.9, r

def test_decoder_fine_tune_keeps_latent_space_and_ships(tiny_export, tmp_path):
    from diffusers import AutoencoderKL

    from studio.training.ship_text import RECOMMENDED, assemble
    from studio.training.vae_train import train_vae

    root, _, _ = tiny_export
    src = root / "a" / "final"
    ft = train_vae(tmp_path / "ft", steps=2, batch_size=4, dataset_n=40, dataset_cache=root / "cache",
                   checkpoint_every=0, warmup_steps=1, init_from=src / "vae", decoder_only=True)
    old = AutoencoderKL.from_pretrained(str(src / "vae")).state_dict()
    new = AutoencoderKL.from_pretrained(ft["export"]).state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    out = tmp_path / "ship"
    assemble(src, out, Path(ft["export"]))
    shipped = AutoencoderKL.from_pretrained(str(out / "vae"))
    assert shipped.config.scaling_factor == pytest.approx(
        AutoencoderKL.from_pretrained(str(src / "vae")).config.scaling_factor)
    assert json.loads((out / "recommended.json").read_text()) == RECOMMENDED
    _check_pipeline_folder(out)
    # an autoencoder trained separately has another encoder: refused
    from studio.training.text_model import TINY_VAE_CONFIG

    other = train_vae(tmp_path / "other", steps=1, batch_size=4, dataset_n=40, dataset_cache=root / "cache",
                      checkpoint_every=0, warmup_steps=1, seed=5, vae_config=TINY_VAE_CONFIG)
    with pytest.raises(ValueError, match="encoder differs"):
        assemble(src, tmp_path / "bad", Path(other["export"]))


def test_ship_text_command_refuses_bad_folders_in_one_line(tiny_export, tmp_path, capsys):
    from studio.training.ship_text import main
    from studio.training.text_model import TINY_VAE_CONFIG
    from studio.training.vae_train import train_vae

    root, _, _ = tiny_export
    src = str(root / "a" / "final")
    other = train_vae(tmp_path / "other", steps=1, batch_size=4, dataset_n=40, dataset_cache=root / "cache",
                      checkpoint_every=0, warmup_steps=1, seed=5, vae_config=TINY_VAE_CONFIG)
    cases = [(["--pipeline", str(tmp_path)], "no model_index.json"),
             (["--pipeline", src, "--vae", str(tmp_path / "missing")], "no config.json"),
             (["--pipeline", src, "--vae", other["export"]], "encoder differs")]
    for args, needle in cases:
        assert main([*args, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err


@pytest.mark.slow
def test_studio_eval_runs_text_model_settings(tiny_export, capsys):
    """`studio eval` on a pipeline folder measures prompt adherence (text_eval), as JSON."""
    from studio.cli import main

    root, _, _ = tiny_export
    folder = str(root / "a" / "final")
    assert main(["eval", "--model", folder, "--n", "10", "--only", "cfg", "--cfg-scales", "3", "--json",
                 "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    (r,) = res["results"]
    assert r["setting"] == "held-in w=3" and r["n"] == 10 and r["guidance"] == 3.0
    assert 0 <= r["digit_accuracy"] <= 1 and sum(r["digit_read"]) == 10 and sum(r["fg_read"]) == 10
    # groups of the other kind of model are one-line errors, not tracebacks
    assert main(["eval", "--model", folder, "--only", "ddim_table"]) == 2
    assert "text model has the groups" in capsys.readouterr().err
    assert main(["eval", "--only", "held_out"]) == 2
    assert "digits model has the groups" in capsys.readouterr().err


@pytest.mark.slow
def test_studio_eval_stderr_has_no_library_advice(tiny_export):
    """A fresh `studio eval` process prints its own progress, not diffusers' or transformers'
    advice about their loaders (accelerate, torchvision image processors)."""
    import subprocess
    import sys

    root, _, _ = tiny_export
    r = subprocess.run([sys.executable, "-m", "studio", "eval", "--model", str(root / "a" / "final"), "--n", "10",
                        "--only", "cfg", "--cfg-scales", "3", "--json", "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["n"] == 10
    for word in ("accelerate", "torchvision", "[transformers]", "Loading", "Traceback"):
        assert word not in r.stderr, r.stderr


@pytest.mark.slow
def test_text_trainers_save_without_library_progress_bars(tiny_export, tmp_path, capfd):
    """Saving a text encoder makes transformers draw a "Writing model shards" bar; the trainers
    print their own progress, so neither `studio train text-encoder` nor a pipeline export shows it."""
    import subprocess
    import sys

    from diffusers import StableDiffusionPipeline

    from studio.training.text_model import export_pipeline

    r = subprocess.run([sys.executable, "-m", "studio", "train", "text-encoder", "--out", str(tmp_path / "te"),
                        "--steps", "2", "--batch-size", "8", "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "te" / "final" / "text_encoder" / "model.safetensors").exists()
    assert "text-encoder [" in r.stderr and "Writing" not in r.stderr, r.stderr
    root, _, _ = tiny_export
    src = root / "a" / "final"
    pipe = StableDiffusionPipeline.from_pretrained(str(src), safety_checker=None, requires_safety_checker=False)
    capfd.readouterr()
    export_pipeline(tmp_path / "pipe", pipe.vae, pipe.text_encoder, src / "tokenizer", pipe.unet)
    assert (tmp_path / "pipe" / "text_encoder" / "model.safetensors").exists()
    assert "Writing" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- text-encoder pretraining
def test_caption_targets_state_exactly_what_the_caption_says():
    """The pretraining targets, read from a caption's words, agree with the image parameters the
    caption was drawn from, and say "not said" for every attribute a caption leaves out."""
    from studio.training.text_pretrain import HEADS, caption_targets

    rng = np.random.default_rng(3)
    attrs = C.sample_attributes(400, rng, "train")
    for a in attrs:
        for orders in C.CAPTION_ORDERS:
            cap = C.caption(a, rng, orders=orders)
            d, f, b, s = caption_targets(cap)
            words = cap.replace(",", " ").split()
            said_digit = any(w.isdigit() or w in C.DIGIT_WORDS for w in words)
            assert d == (a[0] if said_digit else HEADS["digit"]), cap
            assert f in (a[1], HEADS["fg"]) and b in (a[2], HEADS["bg"]), cap
            assert (f != HEADS["fg"]) + (b != HEADS["bg"]) == len([w for w in words if w in C.COLOUR_NAMES]), cap
            style = C.FONT_STYLE[C.FONT_NAMES[a[3]]]
            assert s == (C.STYLE_WORDS.index(style) if style and style in words else HEADS["style"]), cap
    assert caption_targets("") == tuple(HEADS.values())
    # whatever the word order, the colour right after "on" (or "on a") is the background
    red, grey, blue = (C.COLOUR_NAMES.index(c) for c in ("red", "grey", "blue"))
    assert caption_targets("on a grey background, a red 1")[:3] == (1, red, grey)
    assert caption_targets("a 7 in red on blue")[:3] == (7, red, blue)
    assert caption_targets("on blue, a six")[:3] == (6, HEADS["fg"], blue)


@pytest.mark.slow
def test_pretrained_text_encoder_learns_captions_and_starts_the_unet_run(tmp_path):
    """A few hundred steps of the tiny encoder beat chance on held-back captions; the exported
    folder loads into a text-diffusion run, and a mismatched one is a one-line error."""
    from studio.training.text_model import TEXT_CONFIG, TINY_TEXT_CONFIG
    from studio.training.text_pretrain import load_pretrained_text_encoder, pretrain_text_encoder

    torch.set_num_threads(1)
    s = pretrain_text_encoder(tmp_path / "te", steps=150, batch_size=64, lr=3e-3, text_config=TINY_TEXT_CONFIG)
    acc = s["held_back_accuracy"]  # on captions that state it, chance is 1 / the number of values
    assert acc["digit_when_said"] > 0.4 and acc["fg_when_said"] > 0.3 and acc["bg_when_said"] > 0.3
    tok = load_tokenizer(tmp_path / "te" / "final" / "tokenizer")
    enc = load_pretrained_text_encoder(tmp_path / "te" / "final", tok, TINY_TEXT_CONFIG)
    assert enc.config.hidden_size == TINY_TEXT_CONFIG["hidden_size"]
    with pytest.raises(ValueError, match="does not match this run's configuration"):
        load_pretrained_text_encoder(tmp_path / "te" / "final", tok, TEXT_CONFIG)
    with pytest.raises(ValueError, match="no text_encoder/model.safetensors"):
        load_pretrained_text_encoder(tmp_path, tok, TINY_TEXT_CONFIG)


@pytest.mark.slow
def test_pretrained_text_encoder_stays_frozen_in_the_unet_run(tiny_export, tmp_path):
    """With --text-encoder, the UNet run conditions on the pretrained encoder unchanged (as SD on
    CLIP) and exports exactly its weights; the UNet itself does train."""
    from safetensors.torch import load_file

    from studio.training.text_diffusion import train_text_diffusion
    from studio.training.text_model import TINY_TEXT_CONFIG, TINY_UNET_CONFIG
    from studio.training.text_pretrain import pretrain_text_encoder

    torch.set_num_threads(1)
    root, _, _ = tiny_export
    pretrain_text_encoder(tmp_path / "te", steps=5, batch_size=16, text_config=TINY_TEXT_CONFIG)
    s = train_text_diffusion(tmp_path / "u", root / "vae" / "final", steps=3, batch_size=4, dataset_n=40,
                             dataset_cache=root / "cache", unet_config=TINY_UNET_CONFIG,
                             text_config=TINY_TEXT_CONFIG, checkpoint_every=0, grid_per_prompt=0, warmup_steps=1,
                             text_encoder_init=tmp_path / "te" / "final")
    assert s["text_encoder_init"] == str(tmp_path / "te" / "final")
    before = load_file(str(tmp_path / "te" / "final" / "text_encoder" / "model.safetensors"))
    after = load_file(str(tmp_path / "u" / "final" / "text_encoder" / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    from studio.training.text_model import make_unet

    torch.manual_seed(0)  # the run's seed: its UNet's initial weights
    init = make_unet(TINY_UNET_CONFIG).state_dict()
    trained = load_file(str(tmp_path / "u" / "checkpoints" / "step_000003" / "unet.safetensors"))
    assert any(not torch.equal(init[k], trained[k]) for k in init)


# ----------------------------------------------------------------------------- v-prediction, zero terminal SNR
def prediction_target(z0, noise, abar, prediction_type):
    """The training target for x_t = sqrt(ᾱ) z₀ + sqrt(1 − ᾱ) ε, as the trainer computes it."""
    from studio.core.prediction import from_x0_eps

    return from_x0_eps(z0, noise, abar.sqrt(), (1 - abar).sqrt(), prediction_type)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_what_the_samplers_convert_back(prediction_type):
    from studio.core.prediction import from_x0_eps, to_epsilon, to_x0

    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    a, b = 0.6, 0.8  # a² + b² = 1
    out = from_x0_eps(x0, eps, a, b, prediction_type)
    xt = a * x0 + b * eps
    torch.testing.assert_close(to_x0(out, xt, a, b, prediction_type), x0)
    torch.testing.assert_close(to_epsilon(out, xt, a, b, prediction_type), eps)


def test_zero_terminal_snr_schedule_and_v_target_match_lin_et_al_and_diffusers():
    from diffusers import DDIMScheduler

    from studio.training.text_model import alphas_cumprod, scheduler_config

    cfg = scheduler_config("v_prediction", zero_terminal_snr=True)
    assert cfg["rescale_betas_zero_snr"] is True and cfg["timestep_spacing"] == "trailing"
    # Lin et al. 2024, Alg. 1: sqrt(ᾱ) shifted so the last is 0 and scaled so the first is kept
    r0, r = alphas_cumprod().double().sqrt(), alphas_cumprod(cfg).double().sqrt()
    torch.testing.assert_close(r, (r0 - r0[-1]) * r0[0] / (r0[0] - r0[-1]), atol=1e-5, rtol=0)
    assert r[-1].item() == 0
    # v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) z₀: diffusers' get_velocity is the oracle
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 300, 700, 999])
    ac = alphas_cumprod(cfg)
    v = prediction_target(z0, noise, ac[t].view(-1, 1, 1, 1), "v_prediction")
    torch.testing.assert_close(v, DDIMScheduler(**cfg).get_velocity(z0, noise, t))
    torch.testing.assert_close(v[3], -z0[3])  # at SNR 0 the target is the clean latent, not the input
    with pytest.raises(ValueError, match="needs v-prediction"):
        scheduler_config("epsilon", zero_terminal_snr=True)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_give_min_snr_gamma_times_the_x0_error(prediction_type):
    """Hang et al. 2023: the loss weighted by Min-SNR-γ is min(SNR, γ)·‖x̂₀ − x₀‖², whichever target the
    network predicts: a prediction off by Δ in x₀ is off by sqrt(SNR)·Δ in ε and by Δ/sqrt(1 − ᾱ) in v."""
    from studio.training.diffusion import min_snr_weights
    from studio.training.text_model import alphas_cumprod, scheduler_config

    cfg = scheduler_config(prediction_type, zero_terminal_snr=prediction_type == "v_prediction")
    t = torch.tensor([10, 200, 500, 900] + ([999] if prediction_type == "v_prediction" else []))
    a = alphas_cumprod(cfg).double()[t].view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(1)
    z0, noise, delta = (torch.randn(len(t), 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    x0_hat = z0 + delta
    eps_hat = (zt - a.sqrt() * x0_hat) / (1 - a).sqrt()  # the same prediction, as ε
    err = (prediction_target(x0_hat, eps_hat, a, prediction_type)
           - prediction_target(z0, noise, a, prediction_type)).pow(2).mean(dim=(1, 2, 3))
    snr = (a / (1 - a)).flatten()
    weighted = min_snr_weights(a.flatten(), 5.0, prediction_type) * err
    torch.testing.assert_close(weighted, snr.clamp(max=5.0) * delta.pow(2).mean(dim=(1, 2, 3)))


def test_v_prediction_zero_snr_run_exports_a_folder_both_samplers_read(tiny_export, tmp_path):
    from studio.core.pipeline import load_pipeline_folder
    from studio.training.text_diffusion import train_text_diffusion
    from studio.training.text_model import TINY_TEXT_CONFIG, TINY_UNET_CONFIG

    root, _, _ = tiny_export
    kw = dict(batch_size=4, dataset_n=40, dataset_cache=root / "cache", unet_config=TINY_UNET_CONFIG,
              text_config=TINY_TEXT_CONFIG, checkpoint_every=1, grid_per_prompt=0, warmup_steps=1)
    s = train_text_diffusion(tmp_path / "v", root / "vae" / "final", steps=2, prediction_type="v_prediction",
                             zero_terminal_snr=True, **kw)
    assert np.isfinite(s["recent_loss_mean"])
    sc = json.loads((tmp_path / "v" / "final" / "scheduler" / "scheduler_config.json").read_text())
    assert (sc["prediction_type"], sc["rescale_betas_zero_snr"], sc["timestep_spacing"]) == (
        "v_prediction", True, "trailing")
    pipe = _check_pipeline_folder(tmp_path / "v" / "final")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    model = load_pipeline_folder(tmp_path / "v" / "final", torch.device("cpu"), torch.float32)
    assert model.info.prediction_type == "v_prediction"
    # a checkpoint of one parameterisation is not resumed as the other
    with pytest.raises(ValueError, match="another noise schedule or prediction type"):
        train_text_diffusion(tmp_path / "v", root / "vae" / "final", steps=3, **kw)


def test_cli_zero_terminal_snr_options(tiny_export, tmp_path):
    import argparse

    from studio.training import cli_train

    root, _, _ = tiny_export
    p = argparse.ArgumentParser()
    cli_train.add_train_parser(p.add_subparsers(dest="command"))
    base = ["train", "text-diffusion", "--out", str(tmp_path / "run"), "--vae", str(root / "vae" / "final")]
    cfg = cli_train.config_from_args(p.parse_args(base + ["--zero-terminal-snr"]))
    assert cfg.zero_terminal_snr and cfg.prediction_type is None  # the trainer then picks v_prediction
    with pytest.raises(ValueError, match="needs v-prediction"):  # refused before anything is written
        cli_train.cmd_train(p.parse_args(base + ["--zero-terminal-snr", "--prediction-type", "epsilon"]))
    assert not (tmp_path / "run").exists()


def test_stroke_mask_marks_the_drawn_pixels():
    from studio.training.vae_train import stroke_mask

    x = torch.empty(2, 3, 32, 32)
    x[:] = torch.tensor([-1.0, 0.2, 0.9])[:, None, None]  # a blue background
    x[0, :, 5:20, 14:17] = torch.tensor([0.9, -0.8, -0.8])[:, None, None]  # a red stroke, 3 px wide
    x[1, :, 0:32, 0:2] = torch.tensor([0.9, 0.9, 0.9])[:, None, None]  # a stroke on the border
    m = stroke_mask(x)
    want = torch.zeros(2, 1, 32, 32)
    want[0, :, 5:20, 14:17] = 1
    want[1, :, :, 0:2] = 1  # the border's median is still the background
    assert torch.equal(m, want)
    # a colour 0.2 from the background (below the 0.25 threshold) is not a stroke
    y = x.clone()
    y[0, 0, 25:28, 2:5] += 0.2
    assert torch.equal(stroke_mask(y), want)


def test_stroke_weight_adds_the_weighted_error_of_the_strokes():
    from studio.training.text_model import TINY_VAE_CONFIG, make_vae
    from studio.training.vae_train import stroke_mask, vae_loss

    torch.manual_seed(0)
    vae = make_vae(TINY_VAE_CONFIG)
    x = torch.rand(3, 3, 32, 32) * 0.1 - 0.9
    x[:, :, 8:24, 12:18] = 0.8
    plain, _ = vae_loss(vae, x, torch.Generator().manual_seed(1), 0.0)
    weighted, mse = vae_loss(vae, x, torch.Generator().manual_seed(1), 0.0, stroke_weight=4.0)
    # the same reconstruction, by hand: posterior sample with the same generator
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(1))).sample
    e, m = rec - x, stroke_mask(x)
    assert m.mean() == pytest.approx(16 * 6 / 1024)
    assert plain.item() == pytest.approx((e.abs().mean() + e.square().mean()).item(), rel=1e-5)
    assert weighted.item() == pytest.approx(plain.item() + 4.0 * ((m * e.abs()).mean() + (m * e.square()).mean()).item(),
                                            rel=1e-5)
    assert mse == pytest.approx(e.square().mean().item(), rel=1e-5)
