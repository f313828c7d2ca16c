"""Opening a single-file checkpoint as the studio's text-to-image model, with nothing downloaded.

The steps, each refusing in one line that names the file:

1. ``inspect_checkpoint``: the header, the family and the prediction type (no weight is read);
2. the config folder of that family and prediction type (configs.py; shipped, never fetched);
3. the memory the weights take as they will be loaded, against the memory available;
4. diffusers' own single-file loader, ``<Pipeline>.from_single_file(path, config=FOLDER,
   local_files_only=True, torch_dtype=DTYPE)`` (``diffusers.loaders.single_file``): it reads the file
   (``safetensors``, or a pickle with ``torch.load(weights_only=True)``), converts each component from
   the original CompVis/Stability layout and builds it from the folder's configs. No key is mapped here;
5. every weight loaded: with accelerate (a dependency of peft) diffusers builds the networks empty and
   fills them, so a weight the file lacks stays on the meta device. When the loader fails or leaves
   one, the header is compared with the configured networks (architecture.py) and the refusal names the
   component and a differing key; a file that loads cleanly is not compared again, which keeps the
   open as cheap as diffusers' own;
6. the components handed to ``studio.core.pipeline.build_text_model``: what a pipeline folder opens
   to, so sampling, previews and prompts are the same code.

Weights holding NaN are found when an output is first not finite (``core/weight_health.py``), not by
a pass over every weight at open; ``studio convert`` makes that pass before it writes a folder.

The networks are loaded directly in the chosen dtype where diffusers can (with accelerate installed it
builds them empty and fills them in ``torch_dtype``); without accelerate, diffusers first builds them
in float32 and casts, and the memory check counts that.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from studio.core import memory_check
from studio.core.loading import ModelLoadError
from studio.core.memory_check import human_bytes
from studio.core.weight_health import first_non_finite as first_non_finite_of

from .architecture import check_architecture
from .configs import SCHEDULER_CONFIG, config_folder
from .header import CheckpointError
from .inspection import CheckpointInfo, inspect_checkpoint

SAMPLED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
Available = Callable[[torch.device], Optional[int]]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def build_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype diffusers builds the networks in before loading: ``dtype`` with accelerate, else float32."""
    from diffusers.utils import is_accelerate_available

    return dtype if is_accelerate_available() else torch.float32


def memory_needed(info: CheckpointInfo, dtype: torch.dtype) -> int:
    """Bytes the loaded components take in ``dtype``, with the VAE in float32 (the studio decodes in float32)."""
    vae = info.component("vae")
    extra = vae.parameters * (4 - torch.empty((), dtype=dtype).element_size()) if vae else 0
    return info.weights_bytes(dtype) + max(extra, 0)


def check_memory(info: CheckpointInfo, device: torch.device, dtype: torch.dtype,
                 available: Optional[Available] = None) -> None:
    """Refuse a checkpoint whose weights, as they will be loaded, exceed the memory available: on the CPU,
    where diffusers builds them (in float32 first when it cannot build them in ``dtype``), and on ``device``."""
    available = available or memory_check.available_device_memory
    direct = build_dtype(dtype) == dtype
    need, free = memory_needed(info, dtype if direct else torch.float32), available(torch.device("cpu"))
    if free is not None and need > free:
        how = f"in {_dtype_name(dtype)}" if direct else \
            f"in float32, as diffusers builds them before casting to {_dtype_name(dtype)} without accelerate installed"
        advice = "choose --dtype float16 or close other programs" if dtype == torch.float32 and \
            build_dtype(torch.float16) == torch.float16 else "close other programs"
        raise ModelLoadError(f"{info.path}: its weights need {human_bytes(need)} {how} but only {human_bytes(free)} "
                             f"of memory is available; {advice}")
    if device.type != "cpu":
        need, free = memory_needed(info, dtype), available(device)
        if free is not None and need > free:
            raise ModelLoadError(f"{info.path}: its weights need {human_bytes(need)} in {_dtype_name(dtype)} but "
                                 f"{device} has {human_bytes(free)} free; choose a smaller --dtype or --device cpu")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _pipeline_kwargs(pipeline: str) -> dict:
    if pipeline == "StableDiffusionPipeline":
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return {"add_watermarker": False}


def from_single_file(info: CheckpointInfo, folder: Path, dtype: torch.dtype):
    """diffusers' pipeline of the checkpoint, loaded by ``from_single_file`` with the local ``folder``."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from studio.core.text_model import quiet_libraries

    path = info.path
    if info.header.format == "safetensors" and path.suffix != ".safetensors":
        raise ModelLoadError(f"{path}: a safetensors file must be named *.safetensors for diffusers' loader to read "
                             "it as one; rename it")
    try:
        with quiet_libraries():  # importing the pipeline class logs transformers' advice on image processors
            cls = getattr(diffusers, info.family.pipeline)
            return cls.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=dtype,
                                        **_pipeline_kwargs(info.family.pipeline))
    except MemoryError:
        raise ModelLoadError(f"{path}: out of memory while loading; close other programs or choose a smaller "
                             "--dtype") from None
    except (SingleFileComponentError, ValueError, RuntimeError, OSError, KeyError, TypeError, AttributeError,
            EOFError) as e:
        raise ModelLoadError(f"{path}: diffusers' single-file loader failed ({type(e).__name__}: "
                             f"{_first_line(e)})") from None


def first_non_finite(pipe) -> Optional[str]:
    """``component.weight`` of the first parameter or buffer of ``pipe`` holding a NaN or an infinity, or None."""
    return first_non_finite_of((name, getattr(pipe, name, None)) for name in COMPONENTS)


def first_unloaded(pipe) -> Optional[str]:
    """``component.weight`` of the first parameter or buffer still on the meta device (the file lacked it)."""
    for name in COMPONENTS:
        module = getattr(pipe, name, None)
        if module is not None:
            key = next((k for k, v in module.state_dict().items() if v.is_meta), None)
            if key is not None:
                return f"{name}.{key}"
    return None


def inspect_for_loading(path: str | os.PathLike, allow_pickle: bool = False, prediction_type: Optional[str] = None,
                        sampling: bool = False) -> CheckpointInfo:
    """The checkpoint's header, family and prediction, refusing a file that lacks a component the family
    needs and (``sampling``) a family the studio does not sample from noise."""
    try:
        info = inspect_checkpoint(path, allow_pickle=allow_pickle, prediction_type=prediction_type)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    except ValueError as e:  # an unknown prediction type
        raise ModelLoadError(f"{path}: {e}") from None
    if info.missing:
        raise ModelLoadError(f"{info.path}: holds no {' and no '.join(info.missing)} ({info.family.title} needs "
                             "it); the studio opens complete checkpoints")
    if sampling and info.family.pipeline not in SAMPLED_PIPELINES:
        raise ModelLoadError(f"{info.path}: the studio does not sample {info.family.title} checkpoints; "
                             "`studio convert` writes it as a diffusers folder")
    return info


def _explain_mismatch(info: CheckpointInfo, folder: Path) -> None:
    """Raise the architecture check's one line if the header does not fit ``folder``'s networks."""
    try:
        check_architecture(info.header, info.family, folder)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None


def open_pipeline(path: str | os.PathLike, dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                  prediction_type: Optional[str] = None, device: torch.device = torch.device("cpu"),
                  config_root: Optional[Path] = None, available: Optional[Available] = None, sampling: bool = False,
                  check_finite: bool = True):
    """(info, config folder, diffusers pipeline) of a single-file checkpoint: steps 1–5 of the module
    docstring. ``config_root`` replaces ``assets/configs`` (a folder per family, laid out the same).
    ``check_finite``: scan every weight for NaN now (a model that samples watches its outputs instead)."""
    info = inspect_for_loading(path, allow_pickle, prediction_type, sampling)
    try:
        folder = config_folder(info.family, info.prediction, root=config_root)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    check_memory(info, device, dtype, available)
    try:
        pipe = from_single_file(info, folder, dtype)
    except ModelLoadError:
        _explain_mismatch(info, folder)  # a layout the config does not build says so first
        raise
    missing = first_unloaded(pipe)
    if missing is not None:
        _explain_mismatch(info, folder)
        raise ModelLoadError(f"{info.path}: holds no weight {missing}; the file is damaged or a variant the studio "
                             "has no config for")
    if check_finite:
        bad = first_non_finite(pipe)
        if bad is not None:
            raise ModelLoadError(f"{info.path}: weight {bad} holds NaN or infinite values; the file is damaged, "
                                 "download it again")
    return info, folder, pipe


def open_checkpoint(path: str | os.PathLike, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                    prediction_type: Optional[str] = None, config_root: Optional[Path] = None,
                    available: Optional[Available] = None):
    """A single-file checkpoint opened as a ``TextToImageModel`` on ``device`` in ``dtype``."""
    from studio.core.file_reading import CONFIG_LIMIT, read_json
    from studio.core.pipeline import build_text_model

    info, folder, pipe = open_pipeline(path, dtype, allow_pickle, prediction_type, device, config_root, available,
                                       sampling=True, check_finite=False)
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
    force_zeros = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", True))
    return build_text_model(info.family.pipeline, pipe.unet, pipe.vae, encoders, tokenizers,
                            read_json(folder / SCHEDULER_CONFIG, CONFIG_LIMIT, ModelLoadError), device, dtype,
                            name=info.path.stem,
                            source=str(info.path), force_zeros_for_empty_prompt=force_zeros)
