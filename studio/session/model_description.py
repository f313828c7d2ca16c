"""A model described from its configs and file headers alone, and a recipe checked against that description.

A sweep checks every cell before it creates ``--out`` or starts a worker (studio/sweep/driver.py). Opening
the model there would read every weight once more than the workers do (gigabytes for a pipeline), so the
driver reads only what decides which settings a model takes:

* a UNet2DModel folder (``default`` too): ``config.json`` (flat, or in ``unet/``) for the resolution, the
  channels and the class embeddings; ``class_names.json`` and its null label; ``scheduler_config.json``
  (prediction type, schedule); a classifier folder's ``config.json`` (classifier guidance, its classes);
* a pipeline folder (``digits-text`` too): ``model_index.json``; the UNet's and the VAE's configs (latent
  size and channels, the VAE's scale factor; their size fields within the loader's limits); the scheduler
  config; the tokenizer's length;
* a single-file checkpoint: its header, family and prediction type (checkpoints/inspection.py), then the
  family's shipped config folder (checkpoints/configs.py), against which its shapes are checked
  (checkpoints/architecture.py) and from which the rest is read as from a pipeline folder;
* ``gmm``: the closed-form model itself, which has no weights.

Every weight file the model would load is checked from its header against its size
(checkpoints/header.py), so a file cut short is found here; no tensor is read. The description's ``info``
is a :class:`~studio.core.model.ModelInfo`, the class an opened model's ``info`` is, so
:func:`check_recipe` applies the engine's own checks (label range, prompt or label, size, guidance, plan,
an image to start from) to it unchanged. What the worker still finds only on opening: weights whose
values are damaged (NaN), checksums (``SHA256SUMS``), LoRA and VAE files, memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..checkpoints.header import CheckpointError, read_header
from ..checkpoints.models import apply_model_files, is_checkpoint_spec
from ..core import engine, images
from ..core.file_reading import CONFIG_LIMIT, read_json
from ..core.forward import tail_plan
from ..core.loading import (DEFAULT_MODEL_DIR, TEXT_MODEL_DIR, TEXT_MODEL_NAME, ModelLoadError, _text_only,
                            _unet_shape, load_weights, read_class_names, read_config_json, read_recommended_scales,
                            unet_weights_file)
from ..core.model import ModelInfo
from ..core.schedule import ScheduleError, check_scheduler_config
from ..core.samplers import get_sampler
from .init_image import checked_sha256
from .recipe import Recipe, RecipeError

TOKENS_DEFAULT = 77  # CLIPTokenizer's model_max_length when tokenizer_config.json names none
TEXT_CONDITION = "text"  # what a described text model's conditions are: nothing is encoded


@dataclass(eq=False)
class DescribedModel:
    """What the engine's checks read of a model (``info``, ``classifier``, ``device``), without its weights.

    ``classifier``: where a noise-aware classifier is (a folder, or ``"built in"``), None without one;
    ``weights``: the weight files whose headers were checked."""
    info: ModelInfo
    classifier: Optional[str] = None
    weights: tuple[Path, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def guidance_modes(self) -> tuple[str, ...]:
        """The guidance modes the model can run: CFG needs an unconditional branch (a null label, or the
        empty or negative prompt of a text model), classifier guidance a classifier of its pixels."""
        info = self.info
        modes = ["none"]
        if info.text_conditioned or info.null_label is not None:
            modes.append("cfg")
        if self.classifier is not None and not info.text_conditioned:
            modes.append("classifier")
        return tuple(modes)

    @property
    def labels(self) -> tuple[int, ...]:
        """The class labels a recipe may ask for (none for an unconditional or a text model)."""
        return tuple(range(self.info.num_classes))

    def conditions(self, prompt: str, negative_prompt: Optional[str], batch: int, height: int, width: int):
        """What ``engine.conditioning`` asks a text model for: nothing is encoded here (no weights), so the
        conditional and unconditional branches are markers; a text model always has both."""
        return TEXT_CONDITION, TEXT_CONDITION, []


# -- weights, from their headers -------------------------------------------------------------------
def check_weight_header(path: Path, allow_pickle: bool) -> Path:
    """A weight file checked from its header against its size (a file cut short, a header that lies);
    a pickle is refused unless allowed (and then only its presence is checked)."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        try:
            read_header(path)
        except CheckpointError as e:
            raise ModelLoadError(f"{e}; the file may be truncated or corrupted") from None
    elif not allow_pickle:
        load_weights(path, allow_pickle=False)  # the loader's own refusal; nothing is read
    return path


def component_weights(folder: Path, stem: str, allow_pickle: bool) -> list[Path]:
    """The weight files a component folder would load (as core/pipeline.py finds them), headers checked:
    one safetensors file, the shards an index lists, a lone variant, or (allowed) a pickle."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [check_weight_header(single, allow_pickle)]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, CONFIG_LIMIT, ModelLoadError).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no weight_map; the shard index is malformed")
        return [check_weight_header(folder / str(s), allow_pickle) for s in sorted(set(weight_map.values()))]
    variants = sorted(folder.glob(f"{stem}.*.safetensors"))
    if len(variants) == 1:
        return [check_weight_header(variants[0], allow_pickle)]
    pickled = [p for p in (folder / f"{stem}.bin", folder / "pytorch_model.bin") if p.is_file()]
    if pickled:
        return [check_weight_header(pickled[0], allow_pickle)]
    raise ModelLoadError(f"{folder}: no {stem}.safetensors (component weights are missing)")


def _scheduler(path: Optional[Path]) -> dict:
    config = read_config_json(path) if path is not None else {}
    try:
        check_scheduler_config(config)
    except ScheduleError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    return config


# -- the kinds of model ------------------------------------------------------------------------------
def describe_unet_folder(path, allow_pickle: bool = False, classifier: Optional[str] = None,
                         name: Optional[str] = None) -> DescribedModel:
    """A UNet2DModel folder (flat, or a pipeline layout with unet/ and scheduler/), as
    ``core.loading.load_diffusers_folder`` reads it up to the weights."""
    folder = Path(path).expanduser()
    cfg_path = next((p for p in (folder / "config.json", folder / "unet" / "config.json") if p.exists()),
                    folder / "config.json")
    config = read_config_json(cfg_path)  # a missing folder or config.json: one line naming the path
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ModelLoadError(f"{cfg_path}: model class {cls!r} is not supported; the studio opens UNet2DModel folders")
    sample_size, in_channels, embeds = _unet_shape(cfg_path, config)
    sched_path = next((p for p in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
                       if p.exists()), None)
    sched = _scheduler(sched_path)
    names_path = folder / "class_names.json"
    class_names, null_label = (read_class_names(names_path, embeds)
                               if names_path.exists() or names_path.is_symlink() else ([], None))
    weights = unet_weights_file(cfg_path.parent)
    check_weight_header(weights, allow_pickle)
    if embeds:
        if null_label is None and class_names and len(class_names) == embeds - 1:
            null_label = embeds - 1
        num_classes = embeds - (1 if null_label is not None else 0)
        class_names = class_names or [str(i) for i in range(num_classes)]
    else:
        num_classes, class_names = 0, []
    clf_dir = Path(classifier).expanduser() if classifier else folder / "classifier"
    clf = None
    if classifier or (clf_dir / "config.json").exists():
        n = read_config_json(clf_dir / "config.json").get("num_classes")
        if num_classes and (not isinstance(n, int) or isinstance(n, bool) or n != num_classes):
            raise ModelLoadError(f"{clf_dir / 'config.json'}: the classifier has num_classes {n!r} but the model has "
                                 f"{num_classes} classes; use a classifier trained for this model's classes")
        clf = str(clf_dir)
    info = ModelInfo(name=name or folder.name, sample_size=sample_size, in_channels=in_channels,
                     prediction_type=sched.get("prediction_type", "epsilon"), num_classes=num_classes,
                     null_label=null_label, class_names=class_names, scheduler_config=sched, source=str(folder),
                     has_classifier=clf is not None, recommended_scales=read_recommended_scales(folder))
    return DescribedModel(info, clf, (weights,))


def _pipeline_info(folder: Path, kind: str, *, name: str, source: str, recommended: dict,
                   sample_prompt: str = "") -> ModelInfo:
    """A pipeline's ModelInfo from its configs, as ``core.pipeline.build_text_model`` makes it from the
    loaded components (whose configs these are)."""
    from ..core.pipeline import UNET_LIMITS, VAE_LIMITS, check_config_limits, text_components

    unet_path, vae_path = folder / "unet" / "config.json", folder / "vae" / "config.json"
    unet, vae = read_config_json(unet_path), read_config_json(vae_path)
    check_config_limits(unet, UNET_LIMITS, unet_path)
    check_config_limits(vae, VAE_LIMITS, vae_path)
    size, channels = unet.get("sample_size", 64), unet.get("in_channels", 4)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    for key, v in (("sample_size", size), ("in_channels", channels)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ModelLoadError(f"{unet_path}: {key} must be a positive integer, got {v!r}")
    latent = vae.get("latent_channels", 4)
    if latent != channels:
        raise ModelLoadError(f"{vae_path}: latent_channels {latent} does not match the UNet's in_channels "
                             f"{channels}; the components come from different models")
    blocks = vae.get("block_out_channels", [64])
    tokens = TOKENS_DEFAULT
    tok_cfg = folder / text_components(kind)[0][1] / "tokenizer_config.json"
    if tok_cfg.is_file():
        n = read_config_json(tok_cfg).get("model_max_length", TOKENS_DEFAULT)
        tokens = n if isinstance(n, int) and not isinstance(n, bool) and 0 < n < 1 << 20 else TOKENS_DEFAULT
    encoders = []
    for sub, _ in text_components(kind):
        c = read_config_json(folder / sub / "config.json")
        arch = (c.get("architectures") or ["CLIPTextModel"])[0]
        encoders.append(f"{arch}, hidden size {c.get('hidden_size')}, {c.get('num_hidden_layers')} layers")
    sched = _scheduler(folder / "scheduler" / "scheduler_config.json")
    return ModelInfo(name=name, sample_size=int(size), in_channels=int(channels),
                     prediction_type=sched.get("prediction_type", "epsilon"), scheduler_config=sched, source=source,
                     recommended_scales=dict(recommended), pipeline=kind,
                     vae_scale_factor=2 ** (len(blocks) - 1 if isinstance(blocks, (list, tuple)) and blocks else 0),
                     text_encoders=encoders, max_prompt_tokens=tokens, sample_prompt=sample_prompt)


def describe_pipeline_folder(path, allow_pickle: bool = False, name: Optional[str] = None) -> DescribedModel:
    """A StableDiffusion(XL)Pipeline folder, as ``core.pipeline.load_pipeline_folder`` reads it up to the weights."""
    from ..core.pipeline import DIFFUSERS_WEIGHTS, PIPELINES, TRANSFORMERS_WEIGHTS, checked_index

    folder = Path(path).expanduser()
    _, kind = checked_index(folder)
    weights: list[Path] = []
    for comp in PIPELINES[kind]:
        sub = folder / comp
        if not sub.is_dir():
            raise ModelLoadError(f"{folder}: component {comp}/ is missing (model_index.json lists it)")
        if not comp.startswith("tokenizer"):
            stem = TRANSFORMERS_WEIGHTS if comp.startswith("text_encoder") else DIFFUSERS_WEIGHTS
            weights += component_weights(sub, stem, allow_pickle)
    recommended = read_config_json(folder / "recommended.json") if (folder / "recommended.json").is_file() else {}
    prompt = recommended.get("prompt", "")
    if not isinstance(prompt, str):
        raise ModelLoadError(f"{folder / 'recommended.json'}: prompt must be a string, got {prompt!r}")
    info = _pipeline_info(folder, kind, name=name or folder.name, source=str(folder),
                          recommended=read_recommended_scales(folder), sample_prompt=prompt)
    return DescribedModel(info, None, tuple(weights))


def describe_checkpoint(path, allow_pickle: bool = False, prediction_type: Optional[str] = None) -> DescribedModel:
    """A single-file checkpoint, as ``checkpoints.loading.open_checkpoint`` reads it before diffusers' loader."""
    from ..checkpoints.architecture import check_architecture
    from ..checkpoints.configs import config_folder
    from ..checkpoints.loading import inspect_for_loading

    found = inspect_for_loading(Path(path).expanduser(), allow_pickle, prediction_type, sampling=True)
    try:
        folder = config_folder(found.family, found.prediction)
        check_architecture(found.header, found.family, folder)
    except CheckpointError as e:
        raise ModelLoadError(str(e)) from None
    info = _pipeline_info(folder, found.family.pipeline, name=found.path.stem, source=str(found.path), recommended={})
    return DescribedModel(info, None, (found.path,))


def describe_model(spec: str, classifier: Optional[str] = None, prediction_type: Optional[str] = None,
                   allow_pickle: bool = False) -> DescribedModel:
    """The description of what ``checkpoints.models.load_model(spec, …)`` would open; ModelLoadError
    (one line) for what it would refuse from the files' configs and headers."""
    if is_checkpoint_spec(spec):
        return _text_only(describe_checkpoint(spec, allow_pickle, prediction_type), classifier)
    if spec == "gmm" or (spec == "default" and not (DEFAULT_MODEL_DIR / "config.json").exists()):
        from ..core.gmm import GaussianMixtureModel

        return DescribedModel(GaussianMixtureModel().info, "built in")
    from ..core.pipeline import is_pipeline_folder

    if spec == "default":
        return describe_unet_folder(DEFAULT_MODEL_DIR, classifier=classifier, name="default")
    if spec == TEXT_MODEL_NAME:
        return _text_only(describe_pipeline_folder(TEXT_MODEL_DIR, name=TEXT_MODEL_NAME), classifier)
    if is_pipeline_folder(spec):
        return _text_only(describe_pipeline_folder(spec, allow_pickle), classifier)
    return describe_unet_folder(spec, allow_pickle, classifier)


# -- a recipe against a description ----------------------------------------------------------------------
def check_recipe(model: DescribedModel, recipe: Recipe) -> None:
    """Refuse, in one line, what ``session.runner.Run`` would refuse of ``recipe`` on the opened model before
    its first step: the same engine checks (size, plan, label or prompt, guidance, sampler options) on the
    description, and an image to start from opened and fitted (its SHA-256 checked against the recipe's)."""
    from .runner import image_size, load_init_noise

    recipe = recipe.validate().resolved()
    if not model.info.text_conditioned:
        apply_model_files(model, recipe.loras, recipe.vae)  # LoRAs and VAEs are for text-to-image models
    size = image_size(model, recipe)
    spec = get_sampler(recipe.sampler)
    plan = engine.model_plan(model, spec, recipe.steps, recipe.spacing, recipe.karras, recipe.schedule or None,
                             options=recipe.sampler_options())
    init = None
    if recipe.init_image is not None:
        plan = tail_plan(plan, recipe.first_step())
        checked_sha256(recipe)
        h, w = engine.image_size(model, size)
        try:
            images.open_image(recipe.init_image, (h, w), 3 if model.info.text_conditioned else model.info.in_channels,
                              recipe.init_image_fit)
        except images.ImageError as e:
            raise RecipeError(f"init_image: {e}") from None
    elif recipe.init_noise:
        init = load_init_noise(recipe.init_noise)
    engine.sample(model, recipe.sampler, recipe.steps, options=recipe.sampler_options(), seed=recipe.seed,
                  batch=recipe.batch, label=recipe.label, guidance=recipe.guidance_settings(), spacing=recipe.spacing,
                  karras=recipe.karras, x0_mode=recipe.x0_mode, eps_from_x0=recipe.eps_from_x0,
                  schedule_overrides=recipe.schedule or None, prompt=recipe.prompt,
                  negative_prompt=recipe.negative_prompt, size=size, guidance_rescale=recipe.guidance_rescale,
                  init_noise=init, plan=plan)  # builds the denoiser, which refuses what the model cannot do
