"""The diffusers config folders single-file checkpoints are opened with, shipped with the studio.

A single file holds weights only; diffusers' single-file loader
(``diffusers.loaders.single_file.FromSingleFileMixin.from_single_file``) builds each component from
a diffusers pipeline folder of configs, which it would otherwise fetch from the Hub for the family it
detects (``fetch_diffusers_config``). ``assets/configs/<family>/`` holds those folders (the public
configs of runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 and
stabilityai/stable-diffusion-xl-base/refiner-1.0; ``assets/configs/README.md``). What they lack is the
CLIP tokenizer's ``vocab.json``/``merges.txt``, which :func:`clip_vocab.write_clip_vocab` builds from
the shipped BPE merges.

:func:`config_folder` makes the folder a load uses, once per variant, in the user's cache
(``<cache>/checkpoint-configs/``, the folder ``studio.core.file_hashes`` keeps its digests in): the
shipped files, the tokenizer files, and what the chosen prediction type decides — the scheduler's
``prediction_type`` (and zero terminal SNR with trailing timesteps for a ``ztsnr`` file), the UNet's
``sample_size`` (SD 2.x: 512 for ε, 768 for v). It is written under a staging name and renamed into
place, so a folder that exists is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Optional

from studio.core.file_hashes import user_cache_dir

from .clip_vocab import BPE_FILE, write_clip_vocab
from .families import Family
from .header import CheckpointError
from .prediction import Prediction

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "assets" / "configs"
CACHE_NAME = "checkpoint-configs"
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
UNET_CONFIG = Path("unet") / "config.json"
VAE_CONFIG = Path("vae") / "config.json"


def shipped_config(family: Family, root: Optional[Path] = None) -> Path:
    """The shipped config folder of ``family`` (``root``: another set of folders, laid out the same)."""
    folder = Path(root or CONFIG_ROOT) / family.name
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{folder}: the config folder of {family.title} is missing from this installation; "
                              "reinstall the studio")
    return folder


def _digest(folder: Path) -> str:
    """SHA-256 over the shipped folder's files (names and contents) and the BPE merges they are built with."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(BPE_FILE.read_bytes() if BPE_FILE.is_file() else b"")
    return h.hexdigest()[:16]


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def variant_changes(family: Family, prediction: Prediction, vae_config: dict) -> tuple[dict, dict]:
    """(scheduler config changes, UNet config changes) for the chosen prediction type: its native
    image size in latents (the VAE downsamples once per block after the first)."""
    scheduler: dict = {"prediction_type": prediction.prediction_type}
    if prediction.zero_terminal_snr:  # Lin et al. 2024: rescaled betas, sampled from the last timestep
        scheduler |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    factor = 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)
    return scheduler, {"sample_size": family.native_size(prediction.prediction_type) // factor}


def config_folder(family: Family, prediction: Prediction, root: Optional[Path] = None,
                  cache: Optional[Path] = None) -> Path:
    """The complete diffusers config folder for ``family`` with ``prediction``: made once in the cache."""
    src = shipped_config(family, root)
    snr = "-ztsnr" if prediction.zero_terminal_snr else ""
    target = Path(cache or user_cache_dir() / CACHE_NAME) / f"{family.name}-{prediction.prediction_type}{snr}-{_digest(src)}"
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(src, staging)
        vae = json.loads((staging / VAE_CONFIG).read_text(encoding="utf-8"))
        scheduler, unet = variant_changes(family, prediction, vae)
        _edit_json(staging / SCHEDULER_CONFIG, **scheduler)
        _edit_json(staging / UNET_CONFIG, **unet)
        for name in TOKENIZER_FOLDERS:
            if (staging / name).is_dir():
                write_clip_vocab(staging / name)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").is_file():  # not another process finishing first
                raise
    except OSError as e:
        raise CheckpointError(f"{target}: cannot write the config folder ({e.strerror or e}); check the cache "
                              "folder ($STUDIO_CACHE_DIR)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
