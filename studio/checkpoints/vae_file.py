"""A standalone VAE in place of a model's own (``--vae``), as the web UIs' "SD VAE" setting does.

Only the decoder matters to the studio (latents → images, Rombach et al. 2022 §3): a VAE file changes
how the final images and the full-decode previews look, never the sampled latents. Three forms:

* a single ``.safetensors`` in the original layout (``encoder.down.0.…``, ``decoder.up.0.…``, or the
  same under ``first_stage_model.``): loaded by diffusers' own single-file loader,
  ``AutoencoderKL.from_single_file(state_dict, config=FOLDER)`` (``diffusers.loaders.single_file_model``;
  ``convert_ldm_vae_checkpoint`` maps the names) with FOLDER holding the model's own VAE config, so
  nothing is fetched;
* a single ``.safetensors`` in diffusers' layout (``encoder.down_blocks.0.…``): built from the model's
  VAE config and loaded as is;
* a diffusers VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), with its own config.

A VAE's weights do not say which family it was trained for (SD 1.x and SDXL VAEs have the same
shapes; only their latent scaling differs, 0.18215 against 0.13025). What can be told is refused in
one line: another number of latent channels (SD3's and Flux's 16), another architecture (the header's
shapes, converted with diffusers' converter, against the model's VAE), and — for a folder, whose
config says it — another scaling factor. A file is read with the model's scaling factor.
"""
from __future__ import annotations

import tempfile
import weakref
from pathlib import Path
from typing import Optional

import torch

from studio.core.loading import ModelLoadError

from .architecture import compare, meta_tensors
from .families import UnsupportedCheckpoint, detect_family
from .header import CheckpointError, CheckpointHeader, read_header

PREFIXES = ("first_stage_model.", "vae.", "")
LATENT_KEY = "decoder.conv_in.weight"  # [channels, latent channels, 3, 3] in both layouts
DIFFUSERS_MARKER = "decoder.up_blocks."

# model -> (its own VAE, the file or folder in use instead, with the file's SHA-256)
_SWAPPED: "weakref.WeakKeyDictionary[object, tuple]" = weakref.WeakKeyDictionary()


def _prefix(header: CheckpointHeader) -> Optional[str]:
    return next((p for p in PREFIXES if p + LATENT_KEY in header.tensors), None)


def _not_a_vae(header: CheckpointHeader) -> ModelLoadError:
    try:
        found = detect_family(header)
        what = f"a {found.family.title} checkpoint, not a standalone VAE; open it as the model (--model)"
    except UnsupportedCheckpoint as e:
        what = ("a LoRA, not a VAE; give it with --lora" if e.kind in ("lora", "lycoris") else
                "not a VAE (no decoder.conv_in.weight): " + str(e).split(": ", 1)[-1])
    except CheckpointError as e:
        what = "not a VAE: " + str(e).split(": ", 1)[-1]
    return ModelLoadError(f"{header.path}: {what}")


def _check_shapes(header: CheckpointHeader, prefix: str, model) -> None:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    own = model.vae.config
    latent = header.tensors[prefix + LATENT_KEY].shape
    if len(latent) != 4 or latent[1] != int(own.latent_channels):
        got = latent[1] if len(latent) == 4 else list(latent)
        raise ModelLoadError(f"{header.path}: a VAE with {got} latent channels but {model.info.name} samples "
                             f"{own.latent_channels}-channel latents; choose a VAE made for this model's family")
    tensors = {k.removeprefix(prefix): v for k, v in meta_tensors(header).items() if k.startswith(prefix)}
    with torch.device("meta"):
        module = AutoencoderKL.from_config(dict(own))
    diffusers_layout = any(k.startswith(DIFFUSERS_MARKER) for k in tensors)
    converted = tensors if diffusers_layout else convert_ldm_vae_checkpoint(tensors, dict(own))
    mismatch = compare("vae", converted, module)
    if mismatch:
        raise ModelLoadError(f"{header.path}: does not fit {model.info.name}'s VAE ({mismatch.describe()}); "
                             "choose a VAE made for this model's family")


def _from_file(path: Path, model):
    from diffusers import AutoencoderKL

    from studio.core.loading import load_weights
    from studio.core.text_model import quiet_libraries

    from studio.core.weight_health import is_finite

    try:
        header = read_header(path)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    prefix = _prefix(header)
    if prefix is None:
        raise _not_a_vae(header)
    _check_shapes(header, prefix, model)
    state = {k.removeprefix(prefix): v for k, v in load_weights(path).items() if k.startswith(prefix)}
    bad = next((k for k, v in state.items() if v.is_floating_point() and not is_finite(v)), None)
    if bad is not None:
        raise ModelLoadError(f"{path}: weight {bad} holds NaN or infinite values; the file is damaged, download "
                             "it again")
    with quiet_libraries():
        if any(k.startswith(DIFFUSERS_MARKER) for k in state):
            vae = AutoencoderKL.from_config(dict(model.vae.config))
            vae.load_state_dict(state)
            return vae
        with tempfile.TemporaryDirectory(prefix="studio-vae-config-") as folder:
            model.vae.save_config(folder)
            return AutoencoderKL.from_single_file(state, config=folder, local_files_only=True)


def _from_folder(folder: Path, model):
    from diffusers import AutoencoderKL

    from studio.core.pipeline import check_vae_folder
    from studio.core.text_model import quiet_libraries

    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no config.json; --vae takes a VAE file or a diffusers VAE folder")
    check_vae_folder(folder, model.device)  # absurd sizes refused from the config, before anything is built
    try:
        with quiet_libraries():
            vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{folder}: not a diffusers AutoencoderKL folder ({detail})") from None
    own, got = model.vae.config, vae.config
    if int(got.latent_channels) != int(own.latent_channels) or float(got.scaling_factor) != float(own.scaling_factor):
        raise ModelLoadError(f"{folder}: a VAE with {got.latent_channels} latent channels scaled by "
                             f"{got.scaling_factor} but {model.info.name} uses {own.latent_channels} scaled by "
                             f"{own.scaling_factor}; choose a VAE made for this model's family")
    return vae


def load_vae(path: str, model):
    """The AutoencoderKL of ``path`` (a file or a diffusers VAE folder), refused in one line when it does not
    fit ``model`` (a TextToImageModel)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _from_folder(p, model)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such VAE file or folder")
    return _from_file(p, model)


def apply_vae(model, path: Optional[str]) -> None:
    """Decode ``model``'s latents with the VAE at ``path`` (None: the model's own), loading it only when it
    is not the one in use already (a file is known by its SHA-256)."""
    from studio.core.file_hashes import cached_sha256

    swapped = _SWAPPED.get(model)
    if path is None:
        if swapped is not None:
            model.replace_vae(_SWAPPED.pop(model)[0], None)
        return
    if not getattr(model.info, "text_conditioned", False):
        raise ModelLoadError(f"{path}: a VAE applies to text-to-image models; {model.info.name} is not one")
    p = Path(path).expanduser().resolve()
    key = f"{p}#{cached_sha256(p, ModelLoadError)}" if p.is_file() else str(p)
    if swapped is not None and swapped[1] == key:
        return
    vae = load_vae(str(p), model)
    own = swapped[0] if swapped is not None else model.vae
    model.replace_vae(vae, str(p))
    _SWAPPED[model] = (own, key)
