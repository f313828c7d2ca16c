"""Whether a checkpoint's weights fit the networks its config folder builds, decided from the header.

diffusers' single-file loader converts the original layout with its own converters
(``diffusers.loaders.single_file_utils``: ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``)
and then loads the result with ``load_state_dict(strict=False)`` when accelerate is absent: a weight
the converted dict lacks would silently stay randomly initialised, and one of another shape fails
with a traceback. So before any weight is read, the same converters are run here on the header's
shapes as meta tensors (no memory), the components are built from the same configs on the meta
device, and the two state dicts' names and shapes are compared; a mismatch is one line naming the
component and a differing key. ``tests/test_checkpoint_layouts.py`` makes the same comparison for
the real layouts of SD 1.5, 2.1 and SDXL against the shipped configs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .families import Family, TextEncoder
from .header import CheckpointError, CheckpointHeader

BUFFERS = ("position_ids",)  # saved by older transformers, rebuilt by the model; never a parameter


@dataclass(frozen=True)
class Mismatch:
    """How the converted weights of one component differ from the network its config builds."""
    component: str
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    reshaped: tuple[tuple[str, tuple, tuple], ...]  # (name, shape in the file, shape the network needs)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.reshaped)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} weights missing (e.g. {self.missing[0]})")
        if self.reshaped:
            name, got, want = self.reshaped[0]
            parts.append(f"{len(self.reshaped)} of another shape (e.g. {name} {list(got)}, the config needs "
                         f"{list(want)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} the network does not have (e.g. {self.unexpected[0]})")
        return "; ".join(parts)


def meta_tensors(header: CheckpointHeader) -> dict[str, torch.Tensor]:
    """The header's tensors as meta tensors: names and shapes, no data."""
    return {name: torch.empty(info.shape, device="meta") for name, info in header.tensors.items()}


def _shapes(d: dict) -> dict[str, tuple]:
    return {k.removeprefix("text_model."): tuple(v.shape) for k, v in d.items() if not k.endswith(BUFFERS)}


def compare(component: str, converted: dict, module: torch.nn.Module) -> Mismatch:
    """Names and shapes of ``converted`` against ``module``'s state dict (CLIP's ``text_model.`` level,
    which newer transformers drop, is ignored on both sides)."""
    got, want = _shapes(converted), _shapes(module.state_dict())
    return Mismatch(component, tuple(sorted(want.keys() - got.keys())), tuple(sorted(got.keys() - want.keys())),
                    tuple((k, got[k], want[k]) for k in sorted(got.keys() & want.keys()) if got[k] != want[k]))


def _config(folder: Path, component: str, name: str = "config.json") -> dict:
    return json.loads((folder / component / name).read_text(encoding="utf-8"))


def _text_encoder(folder: Path, te: TextEncoder, tensors: dict) -> Mismatch:
    import transformers
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    config = _config(folder, te.component)
    arch = (config.get("architectures") or ["CLIPTextModel"])[0]
    with torch.device("meta"):
        model = getattr(transformers, arch)(transformers.CLIPTextConfig.from_dict(config))
    if te.prefix.endswith(".transformer."):  # OpenAI CLIP, kept in transformers' layout
        converted = convert_ldm_clip_checkpoint({k: v for k, v in tensors.items() if k.startswith(te.prefix)})
    else:  # an OpenCLIP text tower
        converted = convert_open_clip_checkpoint(model, tensors, prefix=te.prefix)
    return compare(te.component, converted, model)


def mismatches(header: CheckpointHeader, family: Family, folder: Path) -> list[Mismatch]:
    """Each component of ``family`` whose converted weights differ from the network ``folder`` configures."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from studio.core.text_model import quiet_libraries

    tensors = meta_tensors(header)
    out = []
    with quiet_libraries():
        for component, cls, convert in (("unet", UNet2DConditionModel, convert_ldm_unet_checkpoint),
                                        ("vae", AutoencoderKL, convert_ldm_vae_checkpoint)):
            with torch.device("meta"):
                module = cls.from_config(cls.load_config(str(folder / component)))
            out.append(compare(component, convert(tensors, dict(module.config)), module))
        out += [_text_encoder(folder, te, tensors) for te in family.text_encoders]
    return [m for m in out if m]


def check_architecture(header: CheckpointHeader, family: Family, folder: Path) -> None:
    """Refuse, in one line, a file whose weights do not fit ``folder``'s networks exactly."""
    try:
        found = mismatches(header, family, folder)
    except (KeyError, IndexError, ValueError, RuntimeError, TypeError, AttributeError) as e:
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{header.path}: its weights do not convert to {family.title}'s layout "
                              f"({type(e).__name__}: {detail}); the file is damaged or a variant the studio "
                              "has no config for") from None
    if found:
        m = found[0]
        raise CheckpointError(f"{header.path}: its {m.component} does not match {family.title}'s "
                              f"{m.component}/config.json ({m.describe()}); the file is damaged or a variant the "
                              "studio has no config for")
