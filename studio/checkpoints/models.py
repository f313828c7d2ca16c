"""One entry point for every model spec: a single-file checkpoint, or what ``studio.core.loading`` opens.

``studio.core`` cannot open single files itself (they need this package, which is above it), so the
session's model cache, sweeps and the command line open models through :func:`load_model` here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from studio.core import loading as core_loading
from studio.core.loading import BUILTINS, ModelLoadError

from .header import CHECKPOINT_SUFFIXES
from .loading import open_checkpoint


def is_checkpoint_spec(spec: Optional[str]) -> bool:
    """Whether ``spec`` names a single-file checkpoint rather than a built-in or a folder: a file, or a
    checkpoint's name that is not there (so that the message says the file is missing)."""
    if not spec or spec in BUILTINS:
        return False
    path = Path(spec).expanduser()
    return path.is_file() or (path.suffix.lower() in CHECKPOINT_SUFFIXES and not path.is_dir())


def load_model(spec: str, device: str = "auto", dtype: str = "float32", allow_pickle: bool = False,
               classifier: Optional[str] = None, prediction_type: Optional[str] = None):
    """``studio.core.loading.load_model``, and single-file checkpoints (``.safetensors``; ``.ckpt`` and
    other pickles with ``allow_pickle``): ``prediction_type`` overrides what the file's sidecar,
    markers or family say (loading.py)."""
    if is_checkpoint_spec(spec):
        if classifier:
            raise ModelLoadError(f"{classifier}: a noise-aware classifier works on pixel models; {spec} is a "
                                 "latent text-to-image checkpoint (leave --classifier out)")
        return open_checkpoint(Path(os.path.expanduser(spec)), core_loading.resolve_device(device),
                               core_loading.resolve_dtype(dtype), allow_pickle=allow_pickle,
                               prediction_type=prediction_type)
    if prediction_type is not None:
        raise ModelLoadError(f"{spec}: a prediction type is chosen for single-file checkpoints only; a model "
                             "folder's scheduler_config.json states its own")
    return core_loading.load_model(spec, device, dtype, allow_pickle=allow_pickle, classifier=classifier)


def apply_model_files(model, loras=(), vae: Optional[str] = None) -> None:
    """A recipe's LoRAs (``FILE:WEIGHT`` strings) and VAE (a file or folder, None: the model's own) on an open
    model: what is already loaded stays, a weight change is only ``set_adapters`` (lora.py, vae_file.py)."""
    from .lora import apply_loras
    from .vae_file import apply_vae

    apply_vae(model, vae)
    apply_loras(model, loras)
