"""The ``studio`` command: the window with no arguments, and headless subcommands.

  studio                      open the window on the last model used (the first time: the default model)
  studio MODEL | RECIPE       open the window on a model (a built-in name, a folder, a checkpoint file) or on a
                              recipe (.json, exported .png); `studio gui [MODEL | RECIPE]` is the same
  studio sample …             run a sampler headless and write frames, grid, recipe
  studio invert IMAGE …       invert an image to noise (DDIM inversion), regenerate it, print the round trip's PSNR
  studio samplers             list the samplers
  studio info MODEL           describe a model (a single-file checkpoint from its header)
  studio convert FILE --out D write a single-file checkpoint as a diffusers folder
  studio sweep SPEC --out DIR run a grid of recipes (here or on a Ray cluster), tables and plots
  studio dataset / train …    make the built-in model's data and weights
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


_BAR_OPEN = [False]


def _err(msg: str) -> None:
    """One line on stderr, after ending any progress bar line."""
    if _BAR_OPEN[0]:
        sys.stderr.write("\n")
        _BAR_OPEN[0] = False
    print(f"studio: error: {msg}", file=sys.stderr)


class ProgressBar:
    """A one-line progress bar with steps per second on stderr."""

    def __init__(self, label: str = "sampling", stream=None, width: int = 30):
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        fill = int(self.width * done / max(total, 1))
        self.stream.write(f"\r{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {done}/{total} "
                          f"{rate:.1f} steps/s, {left:.0f}s left ")
        _BAR_OPEN[0] = done < total
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per declared recipe setting (``Recipe.schema()``): its type, choices and help come from
    the declaration; values are checked by ``Recipe.validate`` (one line), not here."""
    from .session.recipe import Recipe

    def add(opt, dest: str) -> None:
        kw: dict = {"dest": dest, "help": opt.help or None}
        if opt.kind == "bool":
            kw.update(action=argparse.BooleanOptionalAction, default=None)
        elif opt.kind == "choice":
            kw["choices"] = list(opt.choices)
        elif opt.kind == "pair":
            kw.update(type=float, nargs=2, metavar=("START", "END"))
        elif opt.kind == "strs":  # repeated: --lora A --lora B
            kw.update(action="append", metavar=opt.name.upper().rstrip("S"))
        else:
            kw.update(type={"float": float, "int": int}.get(opt.kind, str), metavar=opt.name.upper())
        parser.add_argument(opt.cli_flag, **kw)

    for name, opt in Recipe.schema().items():
        if opt.kind == "mapping":
            for sub in opt.fields:
                if sub.cli_flag:
                    add(sub, f"{name}.{sub.name}")
        elif opt.cli_flag:
            add(opt, name)


def _recipe_from_args(args):
    from .core.loading import BUILTINS
    from .core.samplers import OPTION_SCHEMA, SAMPLERS
    from .session.recipe import Recipe, RecipeError

    if args.recipe:
        from .session.export import read_recipe

        base = read_recipe(args.recipe)  # bounded, regular files only; .json or an exported .png
        for name in ("init_noise", "init_image"):  # a run folder's recipe names its own copies
            if getattr(base, name) and not os.path.isabs(getattr(base, name)):
                base = base.replace(**{name: str(Path(args.recipe).resolve().parent / getattr(base, name))})
    else:
        base = Recipe()
    changes = {}
    for name, opt in Recipe.schema().items():
        if opt.kind == "mapping":
            given = {sub.name: getattr(args, f"{name}.{sub.name}", None) for sub in opt.fields if sub.cli_flag}
            given = {k: v for k, v in given.items() if v is not None}
            if given:
                changes[name] = {**getattr(base, name), **given}
            continue
        v = getattr(args, name, None) if opt.cli_flag else None
        if v is not None:
            changes[name] = tuple(v) if opt.kind == "pair" else v
    for name in ("init_noise", "init_image"):
        if name in changes:
            changes[name] = str(Path(changes[name]).expanduser().resolve())
    if "init_image" in changes and "init_image_sha256" not in changes:
        changes["init_image_sha256"] = None  # a new image: the run records its digest
    if ("strength" in changes) != ("start_step" in changes) and base.init_image is not None:
        changes.setdefault("strength", None)  # the one given replaces the recipe's other
        changes.setdefault("start_step", None)
    if "model" in changes and changes["model"] not in BUILTINS:
        changes["model"] = str(Path(changes["model"]).expanduser().resolve())
    if changes.get("vae"):
        changes["vae"] = str(Path(changes["vae"]).expanduser().resolve())
    if "loras" in changes:
        from .checkpoints.lora_files import absolute_loras

        changes["loras"] = absolute_loras(changes["loras"])
    recipe = base.replace(**changes)
    spec = SAMPLERS.get(recipe.sampler)
    for name in OPTION_SCHEMA:
        if name in changes and spec is not None and name not in spec.options:
            takers = [n for n, s in SAMPLERS.items() if name in s.options]
            raise RecipeError(f"{OPTION_SCHEMA[name].cli_flag} applies to {', '.join(takers)}, not {recipe.sampler}; "
                              "leave it out or choose one of those samplers")
    if recipe.init_noise and "batch" not in changes:
        from .session.runner import load_init_noise

        recipe = recipe.replace(batch=int(load_init_noise(recipe.init_noise).shape[0]))
    return recipe.validate()


def _warn(msg: str) -> None:
    if _BAR_OPEN[0]:
        sys.stderr.write("\n")
        _BAR_OPEN[0] = False
    print(f"studio: warning: {msg}", file=sys.stderr)


def cmd_sample(args) -> int:
    from .session.atomic import Reservation
    from .session.output import write_run_folder
    from .session.runner import execute
    from .session.trajectory import sweep_stale_spills

    recipe = _recipe_from_args(args)
    _check_attention_step(args, recipe)
    sweep_stale_spills()  # spill caches of studio processes that were killed
    # --out is checked (writable; new, empty or --overwrite) and locked before any sampling
    with Reservation(Path(args.out), args.overwrite, folder=True, overwrite_hint="pass --overwrite") as out_folder:
        traj, fingerprint, extra, model = _sample(args, recipe, execute)
        decodes = traj.decodes  # a latent model's full VAE decodes (None for pixel models)
        full = decodes is not None and args.decode_frames == "full"
        fill = None
        if traj.attention is not None:  # --attention: attention/ is written into the same atomic folder
            from .session.attention_export import write_attention

            for note in traj.attention.notes:
                _warn(note)
            if len(traj.attention):
                def fill(tmp):
                    write_attention(traj, tmp / "attention", args.attention_step, decodes)
        try:
            out = write_run_folder(traj, out_folder.target, save_raw=args.save_raw, scale=args.image_scale,
                                   overwrite=args.overwrite, extra_files=extra,
                                   reservation=out_folder, fingerprint=fingerprint, decodes=decodes, full_frames=full,
                                   progress=None if args.quiet or not full else ProgressBar("decoding frames"),
                                   fill=fill)
        finally:
            traj.close()
    if not args.quiet:
        maps = traj.attention
        print(f"wrote {out}/final.png, xt/0000.png (the noise) … xt/{len(traj.xt) - 1:04d}.png, "
              f"x0/0001.png (step 1) … x0/{len(traj.x0):04d}.png, recipe.json"
              + (", trajectory.npz" if args.save_raw else "")
              + (f", attention/ ({len(maps.tokens)} tokens at {len(maps)} steps, {maps.nbytes / (1 << 20):.1f} MiB "
                 "of maps)" if fill is not None else ""), file=sys.stderr)
    return 0


def _check_attention_step(args, recipe) -> None:
    """``--attention-step`` needs ``--attention`` and a step of the run (refused before sampling)."""
    step = getattr(args, "attention_step", None)
    if step is None:
        return
    from .session.recipe import Recipe, RecipeError

    flag = Recipe.schema()["attention"].cli_flag
    if not recipe.attention:
        raise RecipeError(f"--attention-step applies to runs that keep attention maps; add {flag}")
    steps = recipe.steps - (recipe.first_step() if recipe.init_image else 0)  # image-to-image runs the last ones
    if not 1 <= step <= steps:
        raise RecipeError(f"--attention-step {step} is outside the run's steps 1 to {steps}")


def _sample(args, recipe, execute):
    """Run the recipe for ``studio sample``: the trajectory, the weights' fingerprint, files to copy."""
    from .session.provenance import recorded_weights, weights_fingerprint, weights_warning
    from .session.runner import ModelCache

    extra = {}
    if recipe.init_noise:
        extra[copied_noise_name(recipe.init_noise)] = Path(recipe.init_noise)
    if recipe.init_image:  # the folder keeps the image it started from, byte for byte (its SHA-256 is recorded)
        extra[copied_image_name(recipe.init_image)] = Path(recipe.init_image)
    cache = ModelCache(allow_pickle=args.allow_pickle)
    if args.scale is None and not args.recipe and recipe.guidance != "none":
        # no scale given: the model's recommendation for this guidance, else the studio's (as the window, sweeps)
        from .core.guidance import default_scale

        scale = default_scale(recipe.guidance, cache.get(recipe).info.recommended_scales)
        recipe = recipe.replace(scale=scale).validate()
    model = cache.get(recipe)  # open (and verify) the model before hashing its weights
    if model.info.text_conditioned:
        from .session.decodes import default_preview
        from .session.runner import prompt_notes

        # no --preview: the full decode where it costs little next to a UNet step (measured now), as the window
        preview = args.preview or ("tiny" if args.preview_vae else default_preview(model))
        if preview != "linear":
            model.set_preview(preview, args.preview_vae)
        for note in prompt_notes(model, recipe):
            _warn(note)
    fingerprint = weights_fingerprint(recipe.model, recipe.classifier, recipe.loras, recipe.vae)
    if args.recipe:
        from .session.export import read_recipe_document

        base, document = read_recipe_document(args.recipe)
        if (base.model, base.classifier) == (recipe.model, recipe.classifier):
            warning = weights_warning(recorded_weights(document), fingerprint)
            if warning:
                _warn(warning)
    bar = None if args.quiet else ProgressBar(f"{recipe.sampler} {recipe.steps} steps")
    traj = execute(recipe, cache, progress=bar, notify=_warn if recipe.init_image else None)
    if recipe.init_noise:  # the folder is self-contained: its recipe points at its own copy
        traj.recipe = traj.recipe.replace(init_noise=copied_noise_name(recipe.init_noise))
    if recipe.init_image:
        traj.recipe = traj.recipe.replace(init_image=copied_image_name(recipe.init_image))
    return traj, fingerprint, extra, model


def copied_noise_name(path: str) -> str:
    """The name of a run's initial-noise file in its output folder: init_noise.npy, or init_noise.safetensors
    for an inverted image's x_T."""
    return "init_noise.safetensors" if str(path).lower().endswith(".safetensors") else "init_noise.npy"


# recipe flags `studio invert` refuses: the image is its argument, x_T its result, and it inverts one image
NOT_FOR_INVERT = {
    "init_noise": "an inversion computes x_T from the image, so it cannot start from --init-noise; leave it out",
    "init_image": "`studio invert` takes the image to invert as its argument; leave --init-image out",
    "strength": "--strength applies to image-to-image runs (`studio sample --init-image`), not to an inversion",
    "start_step": "--start-step applies to image-to-image runs (`studio sample --init-image`), not to an inversion",
    "batch": "`studio invert` inverts one image; leave --batch out",
}


def cmd_invert(args) -> int:
    """``studio invert IMAGE --out DIR``: DDIM inversion of the image with the recipe flags' settings, a
    regeneration from its x_T with the same settings, and the round trip's PSNR on one line (stdout)."""
    from .core.guidance import default_scale
    from .session.atomic import Reservation
    from .session.inversion import (X_T_FILE, Inversion, inversion_recipe, regenerate, round_trip,
                                    write_inversion_folder)
    from .session.provenance import weights_fingerprint
    from .session.recipe import RecipeError
    from .session.runner import ModelCache, prompt_notes
    from .session.trajectory import sweep_stale_spills

    for name, why in NOT_FOR_INVERT.items():
        if getattr(args, name, None) is not None:
            raise RecipeError(why)
    args.recipe = None
    image = str(Path(args.image).expanduser().resolve())
    base = _recipe_from_args(args)
    cache = ModelCache(allow_pickle=args.allow_pickle)
    if args.scale is None and base.guidance != "none":  # the model's recommended scale, as `studio sample`
        base = base.replace(scale=default_scale(base.guidance, cache.get(base).info.recommended_scales)).validate()
    recipe = inversion_recipe(base, image, args.inversion, args.inversion_iters)
    sweep_stale_spills()
    with Reservation(Path(args.out), args.overwrite, folder=True, overwrite_hint="pass --overwrite") as out:
        model = cache.get(recipe)
        if model.info.text_conditioned:
            from .session.decodes import default_preview

            preview = default_preview(model)
            if preview != "linear":
                model.set_preview(preview)
        for note in prompt_notes(model, recipe):
            _warn(note)
        inversion = Inversion(recipe, model=model)
        for note in inversion.notes:
            _warn(f"the image to invert was {note}")
        bar = None if args.quiet else ProgressBar(f"inverting {recipe.steps} steps")
        for rec in inversion:
            if bar:
                bar(rec.index + 1, inversion.total_steps)
        stage = out.stage_folder()
        # the inversion never clips; the regeneration neither, unless --x0 asks for it
        run = regenerate(inversion, stage / X_T_FILE, cache=cache,
                         **({"x0_mode": base.x0_mode} if base.x0_mode is not None else {}))
        bar = None if args.quiet else ProgressBar(f"regenerating ({run.recipe.sampler})")
        for rec in run:
            if bar:
                bar(rec.index + 1, run.total_steps)
        trip = round_trip(inversion, run.trajectory.final())
        fingerprint = weights_fingerprint(recipe.model, recipe.classifier, recipe.loras, recipe.vae)
        try:
            target = write_inversion_folder(inversion, run.trajectory, trip, out, stage, copied_image_name(image),
                                            fingerprint, save_raw=args.save_raw, scale=args.image_scale)
        finally:
            inversion.trajectory.close()
            run.trajectory.close()
    print(trip.line())
    if not args.quiet:
        n = len(inversion.trajectory.xt) - 1
        print(f"wrote {target}/xt/0000.png (the image) … xt/{n:04d}.png (x_T), x0/0001.png … x0/{n:04d}.png, "
              f"{X_T_FILE}, recipe.json (`studio sample --recipe {target}/recipe.json` regenerates), "
              "regenerated.png, original.png, round_trip.json", file=sys.stderr)
    return 0


def copied_image_name(path: str) -> str:
    """The name of an image-to-image run's image in its output folder: init_image and the file's own suffix."""
    suffix = Path(path).suffix.lower()
    return "init_image" + (suffix if suffix.isascii() and suffix[1:].isalnum() else "")


def cmd_samplers(args) -> int:
    """Every sampler under its declared group (``SAMPLER_GROUPS``: a header line, then one indented line a
    sampler: name, description, kind, options with their defaults and ranges)."""
    from .core.samplers import SAMPLER_GROUPS, SAMPLERS, samplers_by_group

    width = max(len(n) for n in SAMPLERS)
    for i, (group, names) in enumerate(samplers_by_group().items()):
        print(("\n" if i else "") + f"{group}: {SAMPLER_GROUPS[group]}")
        for name in names:
            spec = SAMPLERS[name]
            kind = "deterministic" if spec.is_deterministic() else "stochastic"
            opts = "; ".join(f"{o.cli_flag} {o.default} ({o.range_text() or ', '.join(map(str, o.choices))})"
                             for o in spec.options.values())
            print(f"  {name:<{width}}  {spec.description} [{kind}]" + (f" options: {opts}" if opts else ""))
    return 0


def cmd_info(args) -> int:
    from .checkpoints.models import is_checkpoint_spec, load_model
    from .core.loading import BUILTINS

    if is_checkpoint_spec(args.model):  # a single file: described from its header, no weight is read
        from .checkpoints import inspect_checkpoint

        print(inspect_checkpoint(Path(args.model).expanduser(), allow_pickle=args.allow_pickle,
                                 prediction_type=args.prediction_type).describe())
        return 0
    model = load_model(args.model if args.model in BUILTINS else str(Path(args.model).expanduser()),
                       args.device or "cpu", allow_pickle=args.allow_pickle, prediction_type=args.prediction_type)
    print(model.info.describe())
    return 0


def cmd_convert(args) -> int:
    """``studio convert FILE --out FOLDER``: a single-file checkpoint written as a diffusers folder."""
    from .checkpoints.convert import load_for_conversion, save_folder
    from .core.loading import resolve_dtype
    from .session.atomic import Reservation

    dtype = resolve_dtype(args.dtype) if args.dtype else None
    # --out is checked (new, empty or --overwrite) and locked before the checkpoint is loaded
    with Reservation(Path(args.out), args.overwrite, folder=True, overwrite_hint="pass --overwrite") as out:
        info, configs, pipe = load_for_conversion(Path(args.file).expanduser(), dtype, allow_pickle=args.allow_pickle,
                                                  prediction_type=args.prediction_type)
        save_folder(pipe, out.stage_folder(), configs)
        out.commit()
    if not args.quiet:
        print(f"wrote {out.target}: {info.family.title}, {info.prediction.prediction_type}, "
              f"{str(pipe.unet.dtype).replace('torch.', '')} weights, SHA256SUMS", file=sys.stderr)
    return 0


def cmd_gui(args) -> int:
    try:
        from .gui.app import main as gui_main
    except ImportError as e:
        print(f"studio: error: the window cannot start ({e}); install PySide6-Essentials or use `studio sample`",
              file=sys.stderr)
        return 1
    target = getattr(args, "target", None) or getattr(args, "model", None)
    return gui_main([] if target is None else [target], prog="studio", own_process=False)  # console_main owns it


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (`studio …: error: …`, exit 2), not a usage dump."""

    def error(self, message: str):
        _err(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from .core.loading import BUILTINS

    p = OneLineParser(prog="studio", usage="%(prog)s [MODEL | RECIPE]\n       %(prog)s COMMAND …",
                      description="Sampling Studio: watch and control diffusion sampling. `studio` alone opens the "
                                  "window on the last model used; `studio MODEL` or `studio RECIPE` opens it on a "
                                  f"model ({', '.join(BUILTINS)}, a model folder or a checkpoint file) or a recipe "
                                  "(.json or an exported .png). The commands below run without the window.")
    sub = p.add_subparsers(dest="command", prog="studio")  # `studio sample …` in the commands' usage lines

    from .session.decodes import FULL_DECODE_SHARE, SHOWN as PREVIEW_MODES
    from .session.output import MIN_FINAL_SIDE

    s = sub.add_parser("sample", help="run a sampler headless and write frames, a grid and the recipe")
    s.add_argument("--recipe", help="start from a recipe.json (flags given here override it)")
    add_recipe_flags(s)  # --model, --sampler, --steps, --eta, …: one per declared recipe setting
    s.add_argument("--allow-pickle", action="store_true",
                   help="allow pickled .bin/.ckpt/.pt weights, read with torch.load(weights_only=True)")
    s.add_argument("--out", required=True, help="output folder (must be new or empty)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.add_argument("--save-raw", action="store_true", help="also write trajectory.npz (float32 xt, x0, t)")
    s.add_argument("--scale-images", dest="image_scale", type=int, default=1,
                   help="nearest-neighbour upscale of every PNG, by whole pixels (each is enlarged to at least "
                        f"{MIN_FINAL_SIDE} px a side anyway)")
    s.add_argument("--quiet", action="store_true", help="no progress bar and no summary line (warnings and errors still print)")
    s.add_argument("--preview", choices=PREVIEW_MODES,
                   help="text-to-image models: how each step's latents become the frames kept — the full VAE "
                        "decode of every step (full), the fitted linear RGB projection (linear, at latent "
                        "resolution) or an AutoencoderTiny (tiny, --preview-vae); default: full where a decode "
                        f"costs at most {FULL_DECODE_SHARE:g}x a UNet evaluation (timed when the model opens), "
                        "else linear")
    s.add_argument("--preview-vae", metavar="PATH",
                   help="an AutoencoderTiny folder (config.json + diffusion_pytorch_model.safetensors) for --preview tiny")
    s.add_argument("--decode-frames", choices=("preview", "full"), default="preview",
                   help="text-to-image models: write xt/ and x0/ frames as the previews (default) or as full VAE "
                        "decodes (one decode per frame); final.png is always the full decode")
    s.add_argument("--attention-step", type=int, metavar="STEP",
                   help="with --attention: the step (1-based, as x0/ numbers its frames) whose heat maps attention/ "
                        "holds beside the last step's (default: the middle step)")
    s.set_defaults(func=cmd_sample)

    from .core.inversion import INVERSION, INVERSION_ITERS

    v = sub.add_parser("invert", help="invert an image to noise (DDIM inversion), regenerate it from that noise and "
                                      "print the round trip's PSNR")
    v.add_argument("image", help="the image to invert (PNG, JPEG, WebP, …; fitted to the model's size as "
                                 "--init-image is)")
    add_recipe_flags(v)  # --model, --prompt, --guidance, --scale, --steps, --timestep-spacing, --sampler, …
    v.add_argument(INVERSION.cli_flag, choices=INVERSION.choices, default=INVERSION.default, help=INVERSION.help)
    v.add_argument(INVERSION_ITERS.cli_flag, type=int, metavar="K",
                   help=INVERSION_ITERS.help + f" (default {INVERSION_ITERS.default}, {INVERSION_ITERS.range_text()})")
    v.add_argument("--allow-pickle", action="store_true",
                   help="allow pickled .bin/.ckpt/.pt weights, read with torch.load(weights_only=True)")
    v.add_argument("--out", required=True, help="output folder (must be new or empty)")
    v.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    v.add_argument("--save-raw", action="store_true", help="also write trajectory.npz (the inversion's float32 xt, "
                                                           "x0, t)")
    v.add_argument("--scale-images", dest="image_scale", type=int, default=1,
                   help="nearest-neighbour upscale of every PNG, by whole pixels")
    v.add_argument("--quiet", action="store_true", help="no progress bars and no summary line (the PSNR line, "
                                                        "warnings and errors still print)")
    v.set_defaults(func=cmd_invert)

    sub.add_parser("samplers", help="list the samplers").set_defaults(func=cmd_samplers)

    from .core.loading import DTYPES
    from .session.recipe import Recipe

    prediction = Recipe.schema()["prediction_type"]  # the recipe's field: one declaration for every command
    i = sub.add_parser("info", help="describe a model: resolution, channels, classes, prediction type, schedule; "
                                    "a single-file checkpoint from its header alone")
    i.add_argument("model")
    i.add_argument("--device", default="cpu", help="where to open the model (default cpu)")
    i.add_argument("--allow-pickle", action="store_true", help="allow .bin/.ckpt weights (torch.load weights_only)")
    i.add_argument(prediction.cli_flag, choices=prediction.choices, help=prediction.help)
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("convert", help="write a single-file Stable Diffusion checkpoint as a diffusers folder")
    c.add_argument("file", help="the checkpoint (.safetensors; .ckpt with --allow-pickle)")
    c.add_argument("--out", required=True, help="output folder (must be new or empty)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.add_argument("--dtype", choices=tuple(DTYPES), help="precision of the written weights (default: the file's)")
    c.add_argument("--allow-pickle", action="store_true",
                   help="allow a pickled .ckpt, read with torch.load(weights_only=True)")
    c.add_argument(prediction.cli_flag, choices=prediction.choices, help=prediction.help)
    c.add_argument("--quiet", action="store_true", help="no summary line (errors still print)")
    c.set_defaults(func=cmd_convert)

    g = sub.add_parser("gui", help="open the window: `studio gui [MODEL | RECIPE]` is `studio [MODEL | RECIPE]`")
    g.add_argument("target", nargs="?", metavar="MODEL|RECIPE",
                   help="a model or a recipe (.json, exported .png) to open; default: the last model used")
    g.add_argument("--model", help="the model to open (the same as MODEL)")
    g.set_defaults(func=cmd_gui)

    from .sweep.cli import add_sweep_parser

    add_sweep_parser(sub)  # studio sweep SPEC.toml --out DIR

    try:
        from .training import cli_train

        cli_train.add_dataset_parser(sub)
        cli_train.add_train_parser(sub)
        from .sweep.evaluate import add_eval_parser

        add_eval_parser(sub)
    except (ImportError, AttributeError):
        pass
    return p


def _opens_in_window(arg: str, parser: argparse.ArgumentParser) -> bool:
    """``studio X`` where X is not a subcommand but a model or a recipe the window can open."""
    commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    if arg.startswith("-") or arg in commands:
        return False
    from .core.loading import BUILTINS

    return arg in BUILTINS or os.path.lexists(os.path.expanduser(arg))


def console_main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``studio`` command (the console script and ``python -m studio``): the studio owns this
    process, so the allocator keeps the network's freed buffers for reuse (``studio train`` larger
    ones: its activations are far above 32 MB; studio/runtime.py), then :func:`main` runs.
    ``main(argv)`` itself changes nothing process-wide, so tests and embedders are not tuned."""
    from .runtime import MMAP_MB, TRAIN_MMAP_MB, own_process

    argv = list(sys.argv[1:] if argv is None else argv)
    mb = TRAIN_MMAP_MB if argv[:1] == ["train"] else MMAP_MB
    own_process(mb, mb)
    return main(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``studio`` with ``argv``; returns the exit status (errors are one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if len(argv) == 1 and _opens_in_window(argv[0], parser):  # `studio RECIPE.json`, `studio MODEL_FOLDER`
        return cmd_gui(argparse.Namespace(target=argv[0]))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        return cmd_gui(args)
    from .core.loading import ModelLoadError
    from .core.records import SamplingError
    from .session.output import OutputError
    from .session.recipe import RecipeError

    from .session.atomic import Terminated, terminate_cleanly

    try:
        with terminate_cleanly():  # SIGTERM/SIGHUP unwind: staging folders and spill caches are removed
            return int(args.func(args) or 0)
    except Terminated as e:
        _err(f"terminated (signal {e.signum}); nothing was written")
        return 128 + int(e.signum)
    except (ModelLoadError, RecipeError, SamplingError, OutputError) as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        _err("interrupted; nothing was written")
        return 130
    except MemoryError:
        _err("out of memory; lower --batch or the image size")
        return 1
    except (ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        _err(msg)
        return 2
    except RuntimeError as e:
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        if "out of memory" in msg.lower():
            msg = "out of memory; lower --batch or use a smaller dtype"
        _err(msg)
        return 1


if __name__ == "__main__":
    sys.exit(console_main())
