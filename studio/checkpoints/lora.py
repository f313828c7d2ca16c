"""LoRAs on a text-to-image model, loaded once and re-weighted without reloading anything.

Each layer a LoRA adapts computes W x + w·(α/r)·B A x (Hu et al. 2021, eq. 3) at the LoRA's weight w.
The loading is diffusers' own: ``load_lora_weights(state_dict, adapter_name=…)`` of the model's
pipeline (``StableDiffusionLoraLoaderMixin`` / ``StableDiffusionXLLoraLoaderMixin`` in
``diffusers.loaders.lora_pipeline``), which converts kohya files and injects peft's LoRA layers
into the UNet and the text encoders; ``set_adapters(names, adapter_weights=…)`` sets w. So a weight
change between runs is one ``set_adapters`` call, and a LoRA stays loaded (as a peft adapter named
by the file's SHA-256) for as long as the model is open.

Before diffusers sees a file, the studio reads its header (header.py: truncated files and lying
headers are refused), identifies the layout and the family it was made for (lora_files.py), and
checks every weight is finite; after loading, that every layer of the file found a layer of the
model. Each refusal is one ``ModelLoadError`` line naming the file.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from studio.core.loading import ModelLoadError

from .header import CheckpointError, read_header
from .lora_files import LoraChoice, LoraLayout, check_family, lora_layout, parse_lora


@dataclass
class LoadedLoras:
    """The adapters loaded on one model: {SHA-256: adapter name}, {file: the SHA-256 it had when last used},
    and the (names, weights) set last."""
    adapters: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    active: tuple = ()
    loads: int = 0  # files loaded by diffusers on this model (a weight change adds none)


_LOADED: "weakref.WeakKeyDictionary[object, LoadedLoras]" = weakref.WeakKeyDictionary()


def loaded_loras(model) -> LoadedLoras:
    """What is loaded on ``model`` (a fresh, empty record for a model that never had a LoRA)."""
    state = _LOADED.get(model)
    if state is None:
        state = _LOADED[model] = LoadedLoras()
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def read_lora(path: Path, model) -> tuple[LoraLayout, dict[str, torch.Tensor]]:
    """The file's layout and tensors, refused in one line when it is not a LoRA for ``model``."""
    from studio.core.loading import load_weights

    from studio.core.weight_health import is_finite

    try:
        header = read_header(path)
        layout = lora_layout(header)
        check_family(path, layout, model)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    state = load_weights(path)
    bad = next((k for k, v in state.items() if v.is_floating_point() and not is_finite(v)), None)
    if bad is not None:
        raise ModelLoadError(f"{path}: weight {bad} holds NaN or infinite values; the file is damaged, download "
                             "it again")
    return layout, state


def _adapted_layers(model, name: str) -> int:
    """Layers of the UNet and text encoders that carry the adapter ``name``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = [model.unet, *model.text_encoders]
    return sum(1 for m in modules for layer in m.modules()
               if isinstance(layer, BaseTunerLayer) and name in getattr(layer, "lora_A", {}))


def _load(model, path: Path, name: str) -> None:
    from studio.core.text_model import quiet_libraries

    layout, state = read_lora(path, model)
    pipe = model.pipeline()
    try:
        with quiet_libraries():
            pipe.load_lora_weights(state, adapter_name=name)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError) as e:
        _forget(pipe, name)
        if "not found in the base model" in str(e) or "Target modules" in str(e):
            raise ModelLoadError(f"{path}: none of its {layout.layers} LoRA layers matches a layer of "
                                 f"{model.info.name}; it was made for another model") from None
        raise ModelLoadError(f"{path}: diffusers cannot load this {layout.layout} LoRA into {model.info.name} "
                             f"({type(e).__name__}: {_first_line(e)})") from None
    found = _adapted_layers(model, name)
    if found < layout.layers:
        _forget(pipe, name)
        what = "none" if found == 0 else f"only {found}"
        raise ModelLoadError(f"{path}: {what} of its {layout.layers} LoRA layers match a layer of "
                             f"{model.info.name}; it was made for another model")


def _forget(pipe, name: str) -> None:
    """Remove a half-loaded adapter, so that a refused file leaves the model as it was."""
    try:
        pipe.delete_adapters([name])
    except (ValueError, KeyError, AttributeError):
        pass


def _adapter(model, state: LoadedLoras, choice: LoraChoice) -> str:
    """The adapter name of ``choice``'s file on ``model``, loading it if its content (SHA-256) is not loaded
    yet; an older version of the same file is unloaded."""
    from studio.core.file_hashes import cached_sha256

    path = Path(choice.path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such LoRA file" if not path.exists() else
                             f"{path}: not a file; --lora takes a LoRA .safetensors file")
    digest = cached_sha256(path, ModelLoadError)
    name = state.adapters.get(digest)
    if name is None:
        name = f"lora_{digest[:16]}"
        _load(model, path, name)
        state.adapters[digest] = name
        state.loads += 1
    old = state.files.get(str(path.resolve()))
    state.files[str(path.resolve())] = digest
    if old is not None and old != digest and old not in state.files.values():  # the file changed since
        _forget(model.pipeline(), state.adapters.pop(old))
    return name


def apply_loras(model, loras: Sequence[str | LoraChoice]) -> None:
    """Make ``model`` (a TextToImageModel) run with exactly ``loras`` (``FILE[:WEIGHT]`` strings or
    choices) at their weights: files not loaded yet are loaded; the rest is ``set_adapters``."""
    choices = [c if isinstance(c, LoraChoice) else parse_lora(c) for c in loras]
    state = _LOADED.get(model)
    if not choices and (state is None or not state.active):
        return
    if choices and not getattr(model.info, "text_conditioned", False):
        raise ModelLoadError(f"{choices[0].path}: LoRAs apply to text-to-image models; {model.info.name} is not one")
    state = loaded_loras(model)
    names = [_adapter(model, state, c) for c in choices]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{choices[0].path}: the same LoRA is given twice; give it once with the sum of the weights")
    wanted = tuple(zip(names, (c.weight for c in choices)))
    if wanted == state.active:
        return
    from studio.core.text_model import quiet_libraries

    pipe = model.pipeline()
    with quiet_libraries():
        if wanted:
            pipe.enable_lora()
            pipe.set_adapters(names, adapter_weights=[c.weight for c in choices])
        else:
            pipe.disable_lora()
    state.active = wanted
    model.forget_prompts()  # the text encoders may have changed with the weights
