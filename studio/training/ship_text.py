"""Assemble the shipped ``assets/models/digits-text`` folder from finished training runs.

    python -m studio.training.ship_text --pipeline training-runs/text-unet/final \\
        --vae training-runs/text-vae-ft/final --out assets/models/digits-text

Copies the exported ``StableDiffusionPipeline`` folder; with ``--vae``, replaces its
autoencoder by another one with the *same encoder* (a decoder fine-tune,
``studio train vae --decoder-only``), keeping the pipeline's latent ``scaling_factor``
(the encoder is unchanged, so is the latent scale; checked). The UNet's weights are stored as
float16 (half the bytes; diffusers loads them into the float32 model, so sampling stays float32).
Writes ``recommended.json``
(the CFG scale and the sample prompt the window fills in) and ``SHA256SUMS``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from .ship import write_sha256sums

RECOMMENDED = {"cfg_scale": 3, "prompt": "a red 7 on a blue background"}


def swap_vae(folder: Path, vae_dir: Path) -> None:
    """Replace ``folder/vae`` by ``vae_dir`` (same encoder required), keeping the scaling factor."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from ..core.text_model import quiet_libraries

    with quiet_libraries():  # diffusers' advice to install accelerate
        old = AutoencoderKL.from_pretrained(str(folder / "vae"))
        new = AutoencoderKL.from_pretrained(str(vae_dir))
    so, sn = old.state_dict(), new.state_dict()
    frozen = [k for k in so if k.startswith(("encoder.", "quant_conv."))]
    if not all(torch.equal(so[k], sn[k]) for k in frozen):
        raise ValueError(f"{vae_dir}: its encoder differs from the pipeline's; the latent space would not match")
    new.register_to_config(scaling_factor=old.config.scaling_factor)
    shutil.rmtree(folder / "vae")
    new.save_pretrained(str(folder / "vae"), safe_serialization=True)
    assert load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors")).keys() == sn.keys()


def half_unet(path: Path) -> None:
    """Rewrite a safetensors file with its floating tensors as float16."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
              str(path), metadata={"format": "pt"})


def assemble(pipeline: Path, out: Path, vae: Path | None = None) -> dict:
    out = Path(out)
    if out.exists():
        for sub in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for item in Path(pipeline).iterdir():
        if item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)
    if vae is not None:
        swap_vae(out, Path(vae))
    half_unet(out / "unet" / "diffusion_pytorch_model.safetensors")
    (out / "recommended.json").write_text(json.dumps(RECOMMENDED, indent=1) + "\n")
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    write_sha256sums(out)
    return {"total_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.training.ship_text")
    p.add_argument("--pipeline", required=True, type=Path, help="final/ folder of `studio train text-diffusion`")
    p.add_argument("--vae", type=Path, default=None, help="a decoder fine-tune of the pipeline's autoencoder")
    p.add_argument("--out", type=Path, default=Path("assets/models/digits-text"))
    a = p.parse_args(argv)
    if not (a.pipeline / "model_index.json").is_file():
        return _fail(f"{a.pipeline}: no model_index.json; give the final/ folder of a text-diffusion run")
    if a.vae is not None and not (a.vae / "config.json").is_file():
        return _fail(f"{a.vae}: no config.json; give the final/ folder of a `studio train vae --decoder-only` run")
    try:
        print(json.dumps(assemble(a.pipeline, a.out, a.vae), indent=1))
    except (ValueError, OSError) as e:  # an autoencoder with another encoder, an unwritable --out
        return _fail(str(e))
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
