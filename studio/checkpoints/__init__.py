"""Single-file Stable Diffusion checkpoints (SD 1.x, SD 2.x, SDXL): reading and identifying them
from the file's header alone, without loading the weights (docs/checkpoints.md).

Beside ``studio.core`` in the layer graph: it imports ``studio.core`` only (no Qt, no Ray).

    info = inspect_checkpoint(path, allow_pickle=False, prediction_type=None)
    info.family.name, info.prediction.prediction_type, info.weights_bytes(torch.float16)
    print(info.describe())

Modules: ``header`` (the safetensors header, validated), ``pickled`` (opted-in ``.ckpt`` files),
``families`` (detection from key names and shapes), ``prediction`` (ε or v), ``inspection``; opening
one, offline: ``configs`` (the shipped config folders), ``architecture`` (the header against them),
``loading`` (``open_checkpoint``: diffusers' single-file loader → the studio's model), ``models``
(``load_model`` for every model spec), ``convert`` (``studio convert``); LoRAs: ``lora_files`` (what a
file is), ``lora`` (loading and weighting), ``lora_tags`` (the web UIs' ``<lora:NAME:W>`` tags and hashes).
"""
from __future__ import annotations

from .families import (
           FAMILIES,
           Detection,
           Evidence,
           Family,
           UnsupportedCheckpoint,
           detect_family,
)
from .header import (
           CHECKPOINT_SUFFIXES,
           CheckpointError,
           CheckpointHeader,
           TensorInfo,
           read_header,
)
from .inspection import CheckpointInfo, Component, inspect_checkpoint, is_single_file
from .prediction import PREDICTION_CHOICES, Prediction, choose_prediction

__all__ = ["CHECKPOINT_SUFFIXES", "FAMILIES", "PREDICTION_CHOICES", "CheckpointError", "CheckpointHeader",
           "CheckpointInfo", "Component", "Detection", "Evidence", "Family", "Prediction", "TensorInfo",
           "UnsupportedCheckpoint", "choose_prediction", "detect_family", "inspect_checkpoint", "is_single_file",
           "read_header"]
