"""Opening models: the built-ins and diffusers-format UNet2DModel folders.

Weights are read with safetensors only. Pickled weights (.bin/.ckpt/.pt) are
refused unless the caller opts in, and then read with ``torch.load(weights_only=True)``.
Every failure is a ``ModelLoadError`` whose message is one line naming the file
and the problem.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch

from .model import ModelInfo

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_MODEL_DIR = ASSETS / "models" / "digits"
WEIGHT_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_NAMES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.ckpt", "diffusion_pytorch_model.pt")
BUILTINS = ("default", "gmm")


class ModelLoadError(ValueError):
    """A model that cannot be opened; the message names the file and the problem."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError("device mps was asked for but MPS is not available; use --device cpu or auto")
    return dev


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use float32, float16 or bfloat16") from None


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksums(folder: Path) -> None:
    """Check every file listed in ``folder/SHA256SUMS`` (sha256sum format)."""
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        target = folder / name.strip().lstrip("*")
        if not target.exists():
            raise ModelLoadError(f"{target}: listed in SHA256SUMS but missing")
        if sha256_file(target) != digest.strip():
            raise ModelLoadError(f"{target}: SHA-256 does not match SHA256SUMS; the file was modified or corrupted, restore it")


def load_weights(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict: safetensors always; pickles only with ``allow_pickle`` (weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            raise ModelLoadError(f"{path}: not a valid safetensors file ({msg}); the file may be truncated or corrupted") from None
    if not allow_pickle:
        raise ModelLoadError(
            f"{path}: pickled weights are refused because loading them can run code; convert to safetensors "
            "(safetensors.torch.save_file(torch.load(path, weights_only=True), 'diffusion_pytorch_model.safetensors')) "
            "or pass --allow-pickle to load with weights_only=True"
        )
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure becomes one line
        raise ModelLoadError(f"{path}: could not be read with torch.load(weights_only=True) ({e.__class__.__name__})") from None
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: expected a state dict of tensors")
    return sd


def check_state_dict(path: Path, module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        raise ModelLoadError(f"{path}: weight keys do not match the config: {', '.join(parts)}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelLoadError(
                f"{path}: weight {k} has shape {tuple(v.shape)} but the config needs {tuple(expected[k].shape)}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelLoadError(f"{path}: weight {k} contains NaN or inf")


def fix_dtype(unet):
    """Make ``unet.dtype`` a stored value instead of diffusers' search; returns ``unet``.

    diffusers' ``ModelMixin.dtype`` walks every submodule on each access (looking for casting
    hooks; 0.27–0.41 ms on the digits UNet here, ``python -m benchmarks.profile_step_costs``), and
    ``UNet2DModel.forward`` reads it twice per call: ~3 % of a forward pass. The studio owns its network and never changes its dtype after loading,
    so the value is fixed once. Done by giving the instance a subclass with a plain ``dtype``
    property (same name, same weights and config)."""
    cls = type(unet)
    if getattr(cls, "_studio_fixed_dtype", False):
        return unet
    fixed = type(cls.__name__, (cls,), {"dtype": property(lambda self: self._studio_dtype),
                                        "_studio_fixed_dtype": True, "__module__": cls.__module__})
    dtype = next((p.dtype for p in unet.parameters() if p.is_floating_point()), torch.float32)
    unet.__class__ = fixed
    unet._studio_dtype = dtype
    return unet


class DiffusersUNetModel:
    """Adapter around a diffusers ``UNet2DModel``.

    On CPU the network runs in channels-last (NHWC) memory format: oneDNN's convolutions are
    5–10 % faster in it on the 2-core machine (benchmarks/bench_engine.py), and the results agree
    with the NCHW ones to float rounding (~4e-6)."""

    def __init__(self, unet, info: ModelInfo, classifier=None, device=torch.device("cpu"), dtype=torch.float32):
        unet = unet.to(device=device)
        if unet.dtype != dtype:
            from diffusers.utils import logging as dlog

            level = dlog.get_verbosity()
            dlog.set_verbosity_error()  # the module-by-module fp32 advice is for from_pretrained, not us
            try:
                unet = unet.to(dtype=dtype)
            finally:
                dlog.set_verbosity(level)
        self.channels_last = device.type == "cpu"
        if self.channels_last:
            unet = unet.to(memory_format=torch.channels_last)
        self.unet = fix_dtype(unet.eval())
        self.info = info
        self.classifier = classifier
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor], sigma: float) -> torch.Tensor:
        cl = labels if self.unet.config.num_class_embeds else None
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x, t, class_labels=cl).sample


class ClassifierAdapter:
    """Calls a noise-aware classifier network as (x_t, t, σ) → logits."""

    def __init__(self, net: torch.nn.Module, device, dtype=torch.float32):
        self.net = net.to(device=device, dtype=torch.float32).eval()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.net(x.float(), t.float())


def _find(folder: Path, sub: str, name: str) -> Optional[Path]:
    for p in (folder / name, folder / sub / name):
        if p.exists():
            return p
    return None


def load_classifier_folder(folder: Path, device, dtype) -> ClassifierAdapter:
    from ..training.classifier import load_classifier  # the network definition lives with its trainer

    try:
        net = load_classifier(str(folder))
    except ModelLoadError:
        raise
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    return ClassifierAdapter(net, device, dtype)


RECOMMENDED_KEYS = {"cfg_scale": "cfg", "classifier_scale": "classifier"}


def read_recommended_scales(folder: Path) -> dict[str, float]:
    """``recommended.json`` beside the weights: the guidance scales the model card recommends
    (``{"cfg_scale": 3, "classifier_scale": 100}``), as {mode: scale}; {} when there is none."""
    path = folder / "recommended.json"
    if not path.exists():
        return {}
    out = {}
    for key, value in _read_json(path).items():
        if key not in RECOMMENDED_KEYS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ModelLoadError(f"{path}: {key} must be a positive number, got {value!r}")
        out[RECOMMENDED_KEYS[key]] = float(value)
    return out


def load_diffusers_folder(path: str | os.PathLike, device: torch.device, dtype: torch.dtype,
                          allow_pickle: bool = False, classifier: Optional[str] = None, name: Optional[str] = None):
    """Open a diffusers UNet2DModel folder (flat layout, or pipeline layout with unet/ and scheduler/)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"{folder}: no such folder; give a diffusers model folder, 'default' or 'gmm'")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a folder; a model is a folder with config.json and {WEIGHT_NAME}")
    verify_checksums(folder)
    cfg_path = _find(folder, "unet", "config.json")
    if cfg_path is None:
        raise ModelLoadError(f"{folder}: no config.json (looked in the folder and in unet/); this is not a diffusers model folder")
    config = _read_json(cfg_path)
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ModelLoadError(f"{cfg_path}: model class {cls!r} is not supported; the studio opens UNet2DModel folders")
    unet_dir = cfg_path.parent
    weights = unet_dir / WEIGHT_NAME
    if not weights.exists():
        pickled = [unet_dir / n for n in PICKLE_NAMES if (unet_dir / n).exists()]
        if not pickled:
            raise ModelLoadError(f"{unet_dir}: no {WEIGHT_NAME} beside config.json")
        weights = pickled[0]
    from diffusers import UNet2DModel

    try:
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        unet = UNet2DModel.from_config(cfg)
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for bad configs
        raise ModelLoadError(f"{cfg_path}: not a valid UNet2DModel config ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    sd = load_weights(weights, allow_pickle)
    check_state_dict(weights, unet, sd)
    unet.load_state_dict(sd)

    sched_path = _find(folder, "scheduler", "scheduler_config.json")
    sched_cfg = _read_json(sched_path) if sched_path else {}
    ncls_embeds = config.get("num_class_embeds") or 0
    names_path = folder / "class_names.json"
    class_names: list[str] = []
    null_label = None
    if names_path.exists():
        raw = json.loads(names_path.read_text()) if names_path.stat().st_size else []
        if isinstance(raw, dict):
            class_names = [str(c) for c in raw.get("class_names", [])]
            null_label = raw.get("null_label")
        else:
            class_names = [str(c) for c in raw]
    if ncls_embeds:
        if null_label is None and class_names and len(class_names) == ncls_embeds - 1:
            null_label = ncls_embeds - 1
        num_classes = ncls_embeds - (1 if null_label is not None else 0)
        if not class_names:
            class_names = [str(i) for i in range(num_classes)]
    else:
        num_classes, class_names = 0, []
    clf = None
    clf_dir = Path(classifier).expanduser() if classifier else (folder / "classifier")
    if classifier or (clf_dir / "config.json").exists():
        clf = load_classifier_folder(clf_dir, device, dtype)
    info = ModelInfo(
        name=name or folder.name, sample_size=int(config.get("sample_size", 32)),
        in_channels=int(config.get("in_channels", 3)),
        prediction_type=sched_cfg.get("prediction_type", "epsilon"), num_classes=num_classes,
        null_label=null_label, class_names=class_names, scheduler_config=sched_cfg, source=str(folder),
        has_classifier=clf is not None, recommended_scales=read_recommended_scales(folder),
    )
    return DiffusersUNetModel(unet, info, clf, device, dtype)


def load_model(spec: str, device: str = "auto", dtype: str = "float32", allow_pickle: bool = False,
               classifier: Optional[str] = None):
    """``gmm``, ``default`` (the shipped digits model, or ``gmm`` until it exists) or a folder path."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    if spec == "gmm":
        from .gmm import GaussianMixtureModel

        return GaussianMixtureModel(device=dev, dtype=dt)
    if spec == "default":
        if (DEFAULT_MODEL_DIR / "config.json").exists():
            return load_diffusers_folder(DEFAULT_MODEL_DIR, dev, dt, classifier=classifier, name="default")
        from .gmm import GaussianMixtureModel

        return GaussianMixtureModel(device=dev, dtype=dt)
    return load_diffusers_folder(spec, dev, dt, allow_pickle=allow_pickle, classifier=classifier)
