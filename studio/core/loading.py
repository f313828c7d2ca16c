"""Opening models: the built-ins and diffusers-format UNet2DModel folders.

Weights are read with safetensors only. Pickled weights (.bin/.ckpt/.pt) are
refused unless the caller opts in, and then read with ``torch.load(weights_only=True)``.
Every failure is a ``ModelLoadError`` whose message is one line naming the file
and the problem.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Optional

import torch

from . import file_hashes
from .file_reading import CONFIG_LIMIT, inside_folder, open_regular, parse_json, read_json, read_limited, read_text
from .memory_check import check_config_counts, check_fits, count_parameters
from .model import ModelInfo
from .schedule import ScheduleError, check_scheduler_config

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_MODEL_DIR = ASSETS / "models" / "digits"
WEIGHT_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_NAMES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.ckpt", "diffusion_pytorch_model.pt")
TEXT_MODEL_NAME = "digits-text"
TEXT_MODEL_DIR = ASSETS / "models" / "digits-text"
BUILTINS = ("default", "gmm", TEXT_MODEL_NAME)


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


def read_config_json(path: Path) -> dict:
    """A JSON object from a model folder: a bounded read of a regular file (file_reading.py)."""
    data = read_json(path, CONFIG_LIMIT, ModelLoadError)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {_json_kind(data)}")
    return data


def _json_kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    return {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a regular file (cancellable; a device or FIFO is refused, it could never end)."""
    return file_hashes.sha256_file(path, ModelLoadError)


def verify_checksums(folder: Path) -> None:
    """Check every file listed in ``folder/SHA256SUMS`` (``sha256sum`` format: digest, two spaces or
    space-asterisk, name). Names must resolve to regular files inside ``folder``: a line naming
    ``../../dev/zero``, an absolute path or a link out of the folder is refused before anything is
    read. Digests come from the per-user cache when a file is unchanged (file_hashes.py)."""
    sums = folder / "SHA256SUMS"
    if not sums.exists() and not sums.is_symlink():
        return
    text = read_limited(sums, CONFIG_LIMIT, ModelLoadError).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        digest = digest.strip().lower()
        if not sep or len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest) or not name.strip():
            raise ModelLoadError(f"{sums}: line {number} is not '<64 hex digits>  <file name>'")
        target = inside_folder(folder, name.rstrip("\r\n"), ModelLoadError, listed_in="SHA256SUMS")
        if file_hashes.cached_sha256(target, ModelLoadError) != digest:
            raise ModelLoadError(f"{folder / name}: SHA-256 does not match SHA256SUMS; the file was modified or "
                                 "corrupted, restore it")


def load_weights(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict: safetensors always; pickles only with ``allow_pickle`` (weights_only)."""
    open_regular(path, ModelLoadError).close()  # a FIFO or device would block or never end
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
        sd = torch_load_weights_only(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure becomes one line
        raise ModelLoadError(f"{path}: {unpickling_problem(e)}") from None
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path}: holds a {type(sd).__name__}, not a state dict of tensors")
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            kind = type(value).__name__
            raise ModelLoadError(f"{path}: entry {repr(key)[:80]} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a tensor; a weights "
                                 "file maps parameter names to tensors (convert it to safetensors)")
    return sd


def torch_load_weights_only(path, **kw):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with torch's warnings kept off stderr: its
    restricted unpickler warns about pickle protocols it was not written for (advice to torch's developers),
    and a refusal must stay one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=True, **kw)


def unpickling_problem(e: BaseException) -> str:
    """What ``torch.load(weights_only=True)``'s exception ``e`` means, in one clause: the Python object it
    refused to build, the pickle instruction it does not read, or the exception's first line."""
    text = str(e)
    match = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, re.IGNORECASE)
    if match:
        return (f"holds a Python object ({match.group(1)}) besides tensors, which torch.load(weights_only=True) "
                "refuses to build; convert it to safetensors with a tool you trust")
    match = re.search(r"Unsupported operand (\d+)", text)
    if match:
        return (f"uses pickle instruction {match.group(1)}, which torch.load(weights_only=True) does not read: it "
                "was not written by torch.save, or is damaged; convert it to safetensors with a tool you trust")
    first = text.strip().splitlines()[0][:160] if text.strip() else ""
    return (f"could not be read with torch.load(weights_only=True) ({e.__class__.__name__}"
            f"{': ' + first if first else ''}); the file may be damaged or not a weights file")


def check_state_dict(path: Path, module: torch.nn.Module, sd: dict[str, torch.Tensor],
                     check_finite: bool = True) -> None:
    """Refuse ``sd`` unless its names and shapes are exactly ``module``'s; with ``check_finite``, also a
    weight holding NaN or inf (text-to-image models watch their outputs instead: weight_health.py)."""
    from .weight_health import is_finite

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
        if check_finite and v.is_floating_point() and not is_finite(v):
            raise ModelLoadError(f"{path}: weight {k} contains NaN or inf")


def fix_dtype(unet):
    """Make ``unet.dtype`` a stored value instead of diffusers' search; returns ``unet``.

    diffusers' ``ModelMixin.dtype`` walks every submodule on each access (looking for casting
    hooks), and ``UNet2DModel.forward`` reads it twice per call; ``python -m
    benchmarks.profile_step_costs`` measures what that costs per forward pass. The studio owns its
    network and never changes its dtype after loading, so the value is fixed once. Done by giving
    the instance a subclass with a plain ``dtype`` property (same name, same weights and config)."""
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

    On CPU the network runs in channels-last (NHWC) memory format, the layout oneDNN's convolutions
    prefer (PyTorch's CPU performance tuning guide recommends it for convolutional networks); the
    results agree with the NCHW ones to float rounding."""

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


def load_classifier_folder(folder: Path, device, dtype, num_classes: Optional[int] = None) -> ClassifierAdapter:
    """Open a noise-aware classifier folder; with ``num_classes``, refuse one trained on another
    number of classes than the model has (its logits would not index the model's labels)."""
    from .classifier_net import load_classifier  # imported here: classifier_net imports this module

    cfg_path = Path(folder) / "config.json"
    config = read_config_json(cfg_path)  # bounded and regular-file-only, before the trainer's own reader runs
    if num_classes:
        n = config.get("num_classes")
        if not isinstance(n, int) or isinstance(n, bool) or n != num_classes:
            raise ModelLoadError(f"{cfg_path}: the classifier has num_classes {n!r} but the model has {num_classes} "
                                 "classes; use a classifier trained for this model's classes")
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
    for key, value in read_config_json(path).items():
        if key not in RECOMMENDED_KEYS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ModelLoadError(f"{path}: {key} must be a positive number, got {value!r}")
        out[RECOMMENDED_KEYS[key]] = float(value)
    return out


def _unet_shape(cfg_path: Path, config: dict) -> tuple[int, int, int]:
    """(sample_size, in_channels, num_class_embeds) of a UNet2DModel config, checked."""
    def integer(key, default, low, high):
        v = config.get(key, default)
        if v is None and key == "num_class_embeds":
            return 0
        if isinstance(v, (list, tuple)) and key == "sample_size" and len(v) == 2 and v[0] == v[1]:
            v = v[0]
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise ModelLoadError(f"{cfg_path}: {key} must be an integer from {low} to {high}, got {v!r}")
        return v
    return (integer("sample_size", 32, 1, 1 << 16), integer("in_channels", 3, 1, 4096),
            integer("num_class_embeds", None, 0, 1 << 20))


def read_class_names(path: Path, num_class_embeds: int) -> tuple[list[str], Optional[int]]:
    """``class_names.json``: a list of names, or ``{"class_names": [...], "null_label": k}``.

    Checked against the model's ``num_class_embeds`` (N): with a null label, N − 1 names; without,
    N names, or N − 1 (the last embedding is then the null label). A wrong shape would otherwise
    surface as an IndexError in the middle of a run."""
    text = read_text(path, CONFIG_LIMIT, ModelLoadError)
    raw = parse_json(text, str(path), ModelLoadError) if text.strip() else []
    null_label = None
    if isinstance(raw, dict):
        names = raw.get("class_names", [])
        null_label = raw.get("null_label")
        key = "class_names"
    else:
        names, key = raw, None
    where = f"{path}: " + (f"{key} " if key else "")
    if not isinstance(names, list):
        raise ModelLoadError(f"{where}must be a list of class names (or an object with class_names and null_label), "
                             f"got {_json_kind(names)}")
    for i, n in enumerate(names):
        if not isinstance(n, (str, int)) or isinstance(n, bool):
            raise ModelLoadError(f"{where}entry {i} must be a name (a string), got {_json_kind(n)}")
    names = [str(n) for n in names]
    if not num_class_embeds:
        return [], None  # an unconditional model has no classes to name
    if null_label is not None and (not isinstance(null_label, int) or isinstance(null_label, bool)
                                   or not 0 <= null_label < num_class_embeds):
        raise ModelLoadError(f"{path}: null_label must be an integer from 0 to {num_class_embeds - 1} (one of the "
                             f"model's {num_class_embeds} class embeddings) or null, got {null_label!r}")
    allowed = {num_class_embeds - 1} if null_label is not None else {num_class_embeds, num_class_embeds - 1}
    if names and len(names) not in allowed:
        raise ModelLoadError(f"{path}: {len(names)} class names but the model has {num_class_embeds} class embeddings "
                             f"(num_class_embeds in config.json); give {num_class_embeds - 1} names and a null label, "
                             f"or {num_class_embeds} names")
    return names, null_label


def unet_weights_file(unet_dir: Path) -> Path:
    """A UNet folder's weights: ``WEIGHT_NAME``, else the first pickled name present (opened only with the
    opt-in); refused in one line when there is neither."""
    weights = unet_dir / WEIGHT_NAME
    if weights.exists():
        return weights
    pickled = [unet_dir / n for n in PICKLE_NAMES if (unet_dir / n).exists()]
    if not pickled:
        raise ModelLoadError(f"{unet_dir}: no {WEIGHT_NAME} beside config.json")
    return pickled[0]


def load_diffusers_folder(path: str | os.PathLike, device: torch.device, dtype: torch.dtype,
                          allow_pickle: bool = False, classifier: Optional[str] = None, name: Optional[str] = None):
    """Open a diffusers UNet2DModel folder (flat layout, or pipeline layout with unet/ and scheduler/)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelLoadError(f"{folder}: no such folder; give a diffusers model folder or a built-in model "
                             f"({', '.join(BUILTINS)})")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a folder; a model is a folder with config.json and {WEIGHT_NAME}")
    cfg_path = _find(folder, "unet", "config.json")
    if cfg_path is None:
        raise ModelLoadError(f"{folder}: no config.json (looked in the folder and in unet/); this is not a diffusers model folder")
    config = read_config_json(cfg_path)
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ModelLoadError(f"{cfg_path}: model class {cls!r} is not supported; the studio opens UNet2DModel folders")
    sample_size, in_channels, ncls_embeds = _unet_shape(cfg_path, config)
    sched_path = _find(folder, "scheduler", "scheduler_config.json")
    sched_cfg = read_config_json(sched_path) if sched_path else {}
    try:
        check_scheduler_config(sched_cfg)
    except ScheduleError as e:
        raise ModelLoadError(f"{sched_path}: {e}") from None
    names_path = folder / "class_names.json"
    class_names, null_label = (read_class_names(names_path, ncls_embeds)
                               if names_path.exists() or names_path.is_symlink() else ([], None))
    verify_checksums(folder)
    weights = unet_weights_file(cfg_path.parent)
    from diffusers import UNet2DModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    check_config_counts(cfg, str(cfg_path), ModelLoadError)
    try:
        n_params = count_parameters(lambda: UNet2DModel.from_config(cfg))
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for bad configs
        raise ModelLoadError(f"{cfg_path}: not a valid UNet2DModel config ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    check_fits(n_params, cfg, device, dtype, str(cfg_path), ModelLoadError)
    try:
        unet = UNet2DModel.from_config(cfg)
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for bad configs
        raise ModelLoadError(f"{cfg_path}: not a valid UNet2DModel config ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    sd = load_weights(weights, allow_pickle)
    check_state_dict(weights, unet, sd)
    unet.load_state_dict(sd)

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
        clf = load_classifier_folder(clf_dir, device, dtype, num_classes)
    info = ModelInfo(
        name=name or folder.name, sample_size=sample_size, in_channels=in_channels,
        prediction_type=sched_cfg.get("prediction_type", "epsilon"), num_classes=num_classes,
        null_label=null_label, class_names=class_names, scheduler_config=sched_cfg, source=str(folder),
        has_classifier=clf is not None, recommended_scales=read_recommended_scales(folder),
    )
    return DiffusersUNetModel(unet, info, clf, device, dtype)


def load_model(spec: str, device: str = "auto", dtype: str = "float32", allow_pickle: bool = False,
               classifier: Optional[str] = None):
    """``gmm``, ``default`` (the shipped digits model, or ``gmm`` until it exists), ``digits-text`` (the
    shipped text-to-image model), a pipeline folder (``model_index.json``) or a UNet2DModel folder."""
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
    from .pipeline import is_pipeline_folder, load_pipeline_folder

    if spec == TEXT_MODEL_NAME:
        if not is_pipeline_folder(TEXT_MODEL_DIR):
            raise ModelLoadError(f"{TEXT_MODEL_DIR}: the built-in text model is not installed in this checkout")
        return _text_only(load_pipeline_folder(TEXT_MODEL_DIR, dev, dt, name=TEXT_MODEL_NAME), classifier)
    if is_pipeline_folder(spec):
        return _text_only(load_pipeline_folder(spec, dev, dt, allow_pickle=allow_pickle), classifier)
    return load_diffusers_folder(spec, dev, dt, allow_pickle=allow_pickle, classifier=classifier)


def _text_only(model, classifier: Optional[str]):
    if classifier:
        raise ModelLoadError(f"{classifier}: a noise-aware classifier works on pixel models; "
                             f"{model.info.name!r} is a latent text-to-image pipeline (leave --classifier out)")
    return model
