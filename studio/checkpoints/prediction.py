"""What a single-file checkpoint's UNet predicts — noise ε or velocity v — which its weights do not say.

SD 2.0/2.1 were released as 512-base (ε-prediction) and 768-v (v-prediction, Salimans & Ho 2022)
with the same architecture, and fine-tunes of every family exist in both. The web UIs settle it
the way this module does, first answer wins:

1. the user's explicit choice (``--prediction-type``);
2. a sidecar config beside the file with the same stem (``model.yaml`` for ``model.safetensors``, as
   AUTOMATIC1111's web UI reads it; ``.yml`` and ``.json`` too): the original LDM config's
   ``model.params.parameterization`` (``"v"``; absent means LatentDiffusion's default ``"eps"``), or
   SGM's ``model.params.denoiser_config.params.scaling_config.target`` (``…VScaling`` /
   ``…EpsScaling``), or a diffusers scheduler config's ``prediction_type``;
3. the file's own statement: a ``v_pred`` marker tensor (ComfyUI's convention for v-prediction SDXL
   fine-tunes; a ``ztsnr`` marker beside it means a zero-terminal-SNR schedule), or the Stability AI
   model-spec metadata ``modelspec.prediction_type``;
4. a pickled SD 2.x checkpoint whose ``global_step`` is 875000 is the 512-base release (ε): the
   rule of diffusers' single-file scheduler loader;
5. what diffusers' single-file loader assumes for the family: v-prediction for SD 2.x, ε otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studio.core.file_reading import CONFIG_LIMIT, parse_json, read_text
from studio.core.prediction import PREDICTION_TYPES

from .families import SD2, Family
from .header import CheckpointError, CheckpointHeader

PREDICTION_CHOICES = tuple(t for t in PREDICTION_TYPES if t != "sample")  # no SD checkpoint predicts x̂₀
SIDECAR_SUFFIXES = (".yaml", ".yml", ".json")
# LDM "parameterization" / SAI model-spec "prediction_type" / diffusers "prediction_type" -> diffusers name
PARAMETERIZATIONS = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
                     "v-prediction": "v_prediction"}
SGM_SCALINGS = {"EpsScaling": "epsilon", "VScaling": "v_prediction"}  # sgm.modules.diffusionmodules.denoiser_scaling
SD2_BASE_GLOBAL_STEP = 875000  # diffusers' _legacy_load_scheduler: the SD 2 512-base checkpoint's step
V_PRED_MARKER, ZTSNR_MARKER = "v_pred", "ztsnr"
MODELSPEC_PREDICTION = "modelspec.prediction_type"


@dataclass(frozen=True)
class Prediction:
    """The prediction type (``"epsilon"`` or ``"v_prediction"``) and where it came from."""
    prediction_type: str
    source: str
    sidecar: Optional[Path] = None
    zero_terminal_snr: bool = False


def check_prediction_type(value: str) -> str:
    if value not in PREDICTION_CHOICES:
        raise ValueError(f"unknown prediction type {value!r}; use {' or '.join(PREDICTION_CHOICES)}")
    return value


def sidecar_of(path: Path) -> Optional[Path]:
    """The config file beside ``path`` with the same stem, if there is one."""
    return next((c for c in (path.with_suffix(s) for s in SIDECAR_SUFFIXES) if c.is_file()), None)


def _load(sidecar: Path):
    text = read_text(sidecar, CONFIG_LIMIT, CheckpointError)
    if sidecar.suffix == ".json":
        return parse_json(text, str(sidecar), CheckpointError)
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CheckpointError(f"{sidecar}: not valid YAML ({getattr(e, 'problem', None) or 'syntax error'}{where})") \
            from None
    except RecursionError:
        raise CheckpointError(f"{sidecar}: not valid YAML (nested too deeply)") from None


def _named(value, sidecar: Path, field: str) -> str:
    if isinstance(value, str) and value.strip().lower() in PARAMETERIZATIONS:
        return PARAMETERIZATIONS[value.strip().lower()]
    raise CheckpointError(f"{sidecar}: {field} is {value!r}; the studio runs ε (eps) and v-prediction models only")


def _get(data, *path):
    for name in path:
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    return data


def read_sidecar(sidecar: Path) -> tuple[str, str]:
    """(prediction type, which field said so) from a sidecar config; ``CheckpointError`` if it is unusable."""
    data = _load(sidecar)
    if not isinstance(data, dict):
        raise CheckpointError(f"{sidecar}: expected a config (a mapping of settings), got {type(data).__name__}")
    for field in ("prediction_type", "parameterization"):
        if field in data:
            return _named(data[field], sidecar, field), field
    params = _get(data, "model", "params")
    if isinstance(params, dict):
        if "parameterization" in params:
            return _named(params["parameterization"], sidecar, "model.params.parameterization"), \
                "model.params.parameterization"
        target = _get(params, "denoiser_config", "params", "scaling_config", "target")
        if isinstance(target, str):
            scaling = target.rsplit(".", 1)[-1]
            if scaling not in SGM_SCALINGS:
                raise CheckpointError(f"{sidecar}: denoiser scaling {scaling} is not one the studio runs "
                                      f"({' or '.join(SGM_SCALINGS)})")
            return SGM_SCALINGS[scaling], f"denoiser scaling {scaling}"
        return "epsilon", "an LDM config without parameterization (LatentDiffusion's default, eps)"
    raise CheckpointError(f"{sidecar}: says nothing about the prediction type (expected model.params.parameterization "
                          "as in the Stable Diffusion configs, or prediction_type)")


def choose_prediction(header: CheckpointHeader, family: Family, override: Optional[str] = None) -> Prediction:
    """The prediction type of the checkpoint ``header`` describes (rules in the module docstring)."""
    ztsnr = ZTSNR_MARKER in header.tensors
    if override is not None:
        return Prediction(check_prediction_type(override), "chosen explicitly", None, ztsnr)
    sidecar = sidecar_of(header.path)
    if sidecar is not None:
        kind, field = read_sidecar(sidecar)
        return Prediction(kind, f"the sidecar config {sidecar.name} ({field})", sidecar, ztsnr)
    if V_PRED_MARKER in header.tensors:
        return Prediction("v_prediction", f"the file's {V_PRED_MARKER!r} marker key", None, ztsnr)
    spec = header.metadata.get(MODELSPEC_PREDICTION)
    if spec is not None:
        return Prediction(_named(spec, header.path, MODELSPEC_PREDICTION), f"the file's {MODELSPEC_PREDICTION} "
                                                                             "metadata", None, ztsnr)
    if family is SD2 and header.extras.get("global_step") == SD2_BASE_GLOBAL_STEP:
        return Prediction("epsilon", f"global_step {SD2_BASE_GLOBAL_STEP}: the SD 2 512-base release", None, ztsnr)
    return Prediction(family.default_prediction, f"what diffusers' single-file loader assumes for {family.title}; "
                                                 "a sidecar .yaml or --prediction-type overrides it", None, ztsnr)
