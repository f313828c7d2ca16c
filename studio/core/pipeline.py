"""Opening text-to-image latent diffusion pipelines (Stable Diffusion 1.x/2.x, SDXL) from diffusers folders.

A pipeline folder is recognised by its ``model_index.json``. Only the components sampling needs are
read (UNet2DConditionModel, AutoencoderKL, the CLIP text encoders and tokenizers, the scheduler
config); a safety checker or feature extractor is never loaded. The loading rules are the pixel
models' (``loading.py``): safetensors only unless pickles are allowed (then ``weights_only=True``),
``SHA256SUMS`` checked, and every malformed folder a one-line ``ModelLoadError`` naming the
component and the problem.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch

from .loading import ModelLoadError, read_config_json, check_state_dict, fix_dtype, load_weights, read_recommended_scales, verify_checksums
from .memory_check import MAX_SAMPLE_SIZE, check_fits, count_parameters
from .model import ModelInfo
from .text_model import TextToImageModel, quiet_libraries

PIPELINES = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer"),
    "StableDiffusionXLPipeline": ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
    # SDXL's refiner: the second text encoder only (its index lists text_encoder as [null, null])
    "StableDiffusionXLImg2ImgPipeline": ("unet", "vae", "text_encoder_2", "tokenizer_2"),
}
XL_KINDS = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def text_components(kind: str) -> list[tuple[str, str]]:
    """(text encoder, tokenizer) component pairs of a pipeline class, in the order its prompts use them."""
    comps = PIPELINES[kind]
    return [(c, c.replace("text_encoder", "tokenizer")) for c in comps if c.startswith("text_encoder")]
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"
TOKENIZER_FILES = ("vocab.json", "merges.txt")

# The largest value each size field of a component's config.json may take: far above every released model,
# low enough that counting the network's parameters (built on the meta device) takes moments. Memory itself
# is then checked from the parameter count (memory_check.py). A list value (per block) may have at most
# MAX_BLOCKS entries, each within the field's limit.
MAX_BLOCKS = 16
UNET_LIMITS = {"sample_size": MAX_SAMPLE_SIZE, "in_channels": 4096, "out_channels": 4096, "layers_per_block": 64,
               "transformer_layers_per_block": 64, "block_out_channels": 1 << 16, "cross_attention_dim": 1 << 16,
               "attention_head_dim": 1 << 16, "num_attention_heads": 4096, "addition_time_embed_dim": 1 << 16,
               "projection_class_embeddings_input_dim": 1 << 20, "down_block_types": None, "up_block_types": None}
VAE_LIMITS = {"sample_size": MAX_SAMPLE_SIZE, "in_channels": 4096, "out_channels": 4096, "latent_channels": 4096,
              "layers_per_block": 64, "block_out_channels": 1 << 16, "down_block_types": None, "up_block_types": None}
TINY_VAE_LIMITS = {"in_channels": 4096, "out_channels": 4096, "latent_channels": 4096, "num_encoder_blocks": 64,
                   "num_decoder_blocks": 64, "encoder_block_out_channels": 1 << 16,
                   "decoder_block_out_channels": 1 << 16, "upsampling_scaling_factor": 64}
TEXT_ENCODER_LIMITS = {"vocab_size": 1 << 20, "hidden_size": 1 << 16, "intermediate_size": 1 << 18,
                       "num_hidden_layers": 256, "num_attention_heads": 4096, "max_position_embeddings": 1 << 16,
                       "projection_dim": 1 << 16}


def check_config_limits(config: dict, limits: dict, where: Path) -> None:
    """Refuse a size field beyond its limit (``limits``: field → largest value, None for a per-block list
    checked for its length only), one line naming the field, its value and the limit."""
    for key, most in limits.items():
        value = config.get(key)
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_BLOCKS:
                raise ModelLoadError(f"{where}: {key} lists {len(value):,} blocks, at most {MAX_BLOCKS}; this "
                                     "config is wrong or the network is beyond what the studio opens")
            items = [v for entry in value for v in (entry if isinstance(entry, (list, tuple)) else [entry])]
        else:
            items = [value]
        for v in items:
            if most is not None and isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= most:
                raise ModelLoadError(f"{where}: {key} is {v:,}, allowed 0 to {most:,}; this config is wrong or "
                                     "the network is beyond what the studio opens")


def check_vae_folder(folder: Path, device: torch.device) -> None:
    """A standalone AutoencoderKL folder (``--vae FOLDER``) checked as a pipeline's VAE is, before it is built:
    its size fields within :data:`VAE_LIMITS`, its parameters (float32, as the studio decodes) within memory."""
    from diffusers import AutoencoderKL

    cfg_path = folder / "config.json"
    config = {k: v for k, v in read_config_json(cfg_path).items() if not k.startswith("_")}
    check_config_limits(config, VAE_LIMITS, cfg_path)
    n = _count(cfg_path, "AutoencoderKL", lambda: AutoencoderKL.from_config(config))
    check_fits(n, {}, device, torch.float32, str(cfg_path), ModelLoadError)


def _model_config(folder: Path, name: str, cls) -> tuple[Path, dict]:
    """A diffusers component's config.json, checked to name ``cls``; the constructor's arguments."""
    cfg_path = _component(folder, name) / "config.json"
    config = read_config_json(cfg_path)
    want = cls.__name__
    if config.get("_class_name", want) != want:
        raise ModelLoadError(f"{cfg_path}: {name} is a {config.get('_class_name')!r}; the studio needs a {want}")
    return cfg_path, {k: v for k, v in config.items() if not k.startswith("_")}


def _count(cfg_path: Path, what: str, build) -> int:
    try:
        return count_parameters(build)
    except Exception as e:  # noqa: BLE001 - diffusers and transformers raise many types for bad configs
        raise ModelLoadError(f"{cfg_path}: not a valid {what} config ({e.__class__.__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def check_pipeline_size(folder: Path, kind: str, device: torch.device, dtype: torch.dtype,
                        available: Optional[Callable[[torch.device], Optional[int]]] = None) -> int:
    """Refuse, from the configs alone and before any network is built, a pipeline whose size fields are
    absurd (:func:`check_config_limits`), whose parameters (UNet, VAE and text encoders together, counted on
    the meta device) exceed the memory available, or whose feature maps at full size do not fit: the UNet's
    first at ``sample_size`` and the VAE decoder's last at ``sample_size`` × the VAE factor. Returns the
    parameter count; ``available`` is memory_check's ``available_device_memory`` unless given."""
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_path, unet_cfg = _model_config(folder, "unet", UNet2DConditionModel)
    vae_path, vae_cfg = _model_config(folder, "vae", AutoencoderKL)
    check_config_limits(unet_cfg, UNET_LIMITS, unet_path)
    check_config_limits(vae_cfg, VAE_LIMITS, vae_path)
    total = _count(unet_path, "UNet2DConditionModel", lambda: UNet2DConditionModel.from_config(unet_cfg))
    total += _count(vae_path, "AutoencoderKL", lambda: AutoencoderKL.from_config(vae_cfg))
    for name in [c for c in PIPELINES[kind] if c.startswith("text_encoder")]:
        cfg_path = _component(folder, name) / "config.json"
        config = read_config_json(cfg_path)
        check_config_limits(config, TEXT_ENCODER_LIMITS, cfg_path)
        arch = _text_encoder_class(cfg_path, config)
        total += _count(cfg_path, "CLIP text encoder", lambda: arch(transformers.CLIPTextConfig.from_dict(config)))
    check_fits(total, unet_cfg, device, dtype, str(folder), ModelLoadError, available)
    size, channels = unet_cfg.get("sample_size"), vae_cfg.get("block_out_channels")
    if isinstance(size, int) and isinstance(channels, (list, tuple)) and channels:
        image = size * 2 ** (len(channels) - 1)
        check_fits(0, {"sample_size": image, "block_out_channels": channels}, device, dtype,
                   f"{vae_path} (decoding the UNet's sample_size {size})", ModelLoadError, available)
    return total


def is_pipeline_folder(path) -> bool:
    return (Path(path).expanduser() / "model_index.json").is_file()


def _weights_file(folder: Path, stem: str, allow_pickle: bool) -> list[Path]:
    """The weight files of a component: one safetensors file, a sharded set (``*.index.json``), an
    fp16 variant when that is all there is, or (opt-in) a pickle."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = read_config_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index}: no weight_map; the shard index is malformed")
        shards = sorted({folder / str(v) for v in weight_map.values()})
        for s in shards:
            if s.parent != folder or not s.is_file():
                raise ModelLoadError(f"{index}: shard {s.name} is missing")
        return shards
    variants = sorted(folder.glob(f"{stem}.*.safetensors"))
    if len(variants) == 1:
        return variants
    pickled = [folder / f"{stem}.bin", folder / "pytorch_model.bin"]
    pickled = [p for p in pickled if p.is_file()]
    if pickled:
        load_weights(pickled[0], allow_pickle)  # refuses unless allowed, with the usual message
        return pickled[:1]
    raise ModelLoadError(f"{folder}: no {stem}.safetensors (component weights are missing)")


def _load_state(files: list[Path], allow_pickle: bool) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_weights(f, allow_pickle))
    return sd


def _component(folder: Path, name: str) -> Path:
    sub = folder / name
    if not sub.is_dir():
        raise ModelLoadError(f"{folder}: component {name}/ is missing (model_index.json lists it)")
    return sub


def empty_parameters():
    """Build networks with their parameters on the meta device (buffers real): no random initialisation,
    which for an SD-size pipeline took longer than reading its weights. ``load_state_dict(assign=True)``
    then puts the file's tensors in place; the names and shapes are checked first, so none stays empty."""
    from accelerate import init_empty_weights  # a dependency of peft (and of diffusers' own loaders)

    return init_empty_weights(include_buffers=False)


def as_float32(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in float32, as built from its config: assigned tensors keep the file's dtype (an fp16
    variant), and the model casts to the run's dtype itself."""
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in module.parameters()):
        with quiet_libraries():  # diffusers' advice to cast in from_pretrained, which is not used here
            module = module.to(torch.float32)
    return module


def _diffusers_module(folder: Path, name: str, cls, allow_pickle: bool):
    cfg_path, config = _model_config(folder, name, cls)
    sub, want = cfg_path.parent, cls.__name__
    try:
        with empty_parameters():
            module = cls.from_config(config)
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for bad configs
        raise ModelLoadError(f"{cfg_path}: not a valid {want} config ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    files = _weights_file(sub, DIFFUSERS_WEIGHTS, allow_pickle)
    sd = _load_state(files, allow_pickle)
    check_state_dict(files[0], module, sd, check_finite=False)
    module.load_state_dict(sd, assign=True)
    return as_float32(module).eval()


def _text_encoder_class(cfg_path: Path, config: dict):
    """The transformers class a text encoder's config names (its ``architectures``): a CLIP text model."""
    import transformers

    archs = config.get("architectures") or ["CLIPTextModel"]
    arch = archs[0] if isinstance(archs, list) and archs else "CLIPTextModel"
    if arch not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise ModelLoadError(f"{cfg_path}: text encoder {arch!r} is not supported; the studio opens CLIP text encoders")
    return getattr(transformers, arch)


def _text_encoder(folder: Path, name: str, allow_pickle: bool):
    import transformers

    sub = _component(folder, name)
    cfg_path = sub / "config.json"
    config = read_config_json(cfg_path)
    arch = _text_encoder_class(cfg_path, config)
    try:
        cfg = transformers.CLIPTextConfig.from_dict(config)
        with empty_parameters():
            module = arch(cfg)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{cfg_path}: not a valid CLIP text encoder config ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None
    files = _weights_file(sub, TRANSFORMERS_WEIGHTS, allow_pickle)
    sd = _load_state(files, allow_pickle)
    expected = module.state_dict()
    # older exports keep the position-id buffer transformers now computes itself
    sd = {k: v for k, v in sd.items() if k in expected or not k.endswith("position_ids")}
    check_state_dict(files[0], module, sd, check_finite=False)
    module.load_state_dict(sd, strict=False, assign=True)
    return as_float32(module).eval()


def _tokenizer(folder: Path, name: str):
    from transformers import CLIPTokenizer

    sub = _component(folder, name)
    missing = [f for f in TOKENIZER_FILES if not (sub / f).is_file()]
    if missing and not (sub / "tokenizer.json").is_file():
        raise ModelLoadError(f"{sub}: tokenizer files missing ({', '.join(missing)}, or tokenizer.json)")
    try:
        return CLIPTokenizer.from_pretrained(str(sub), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{sub}: the tokenizer cannot be read ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})") from None


def checked_index(folder: Path) -> tuple[dict, str]:
    """A pipeline folder's ``model_index.json`` and the class it names, refused in one line when the studio
    does not open that class or when the index leaves out a component the class needs."""
    index_path = folder / "model_index.json"
    index = read_config_json(index_path)
    kind = index.get("_class_name")
    if kind == "StableDiffusionXLImg2ImgPipeline" and not index.get("requires_aesthetics_score", False):
        # the base model's networks saved as an image-to-image pipeline: both encoders, no aesthetic score
        kind = "StableDiffusionXLPipeline"
    if kind not in PIPELINES:
        raise ModelLoadError(f"{index_path}: pipeline {kind!r} is not supported; the studio opens "
                             f"{' and '.join(PIPELINES)} folders")
    for comp in PIPELINES[kind]:
        entry = index.get(comp)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise ModelLoadError(f"{index_path}: component {comp!r} is missing; a {kind} needs {', '.join(PIPELINES[kind])}")
    return index, kind


def load_pipeline_folder(path, device: torch.device, dtype: torch.dtype, allow_pickle: bool = False,
                         name: Optional[str] = None) -> TextToImageModel:
    """Open a ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` or SDXL refiner
    (``StableDiffusionXLImg2ImgPipeline``) folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(path).expanduser()
    verify_checksums(folder)
    index, kind = checked_index(folder)
    check_pipeline_size(folder, kind, device, dtype)
    unet = _diffusers_module(folder, "unet", UNet2DConditionModel, allow_pickle)
    vae = _diffusers_module(folder, "vae", AutoencoderKL, allow_pickle)
    texts = text_components(kind)
    encoders = [_text_encoder(folder, enc, allow_pickle) for enc, _ in texts]
    tokenizers = [_tokenizer(folder, tok) for _, tok in texts]
    ucfg = unet.config
    hidden = sum(int(e.config.hidden_size) for e in encoders)
    if int(ucfg.cross_attention_dim) != hidden:
        sizes = " + ".join(str(e.config.hidden_size) for e in encoders)
        raise ModelLoadError(f"{folder / texts[0][0]}: hidden size {sizes} does not match the UNet's "
                             f"cross_attention_dim {ucfg.cross_attention_dim}; the components come from different models")
    if int(vae.config.latent_channels) != int(ucfg.in_channels):
        raise ModelLoadError(f"{folder / 'vae'}: latent_channels {vae.config.latent_channels} does not match the UNet's "
                             f"in_channels {ucfg.in_channels}; the components come from different models")
    if kind in XL_KINDS:
        # six time ids (size, crop, target size), or five with the refiner's aesthetic score in place of the target
        n_ids = 5 if kind == "StableDiffusionXLImg2ImgPipeline" else 6
        want = int(ucfg.addition_time_embed_dim or 0) * n_ids + int(encoders[-1].config.projection_dim)
        got = getattr(unet, "add_embedding", None)
        if got is None or int(got.linear_1.in_features) != want:
            raise ModelLoadError(f"{folder / 'text_encoder_2'}: projection_dim {encoders[-1].config.projection_dim} "
                                 "does not match the UNet's added-conditioning input; the components come from "
                                 "different models")
    sched_path = folder / "scheduler" / "scheduler_config.json"
    if not sched_path.is_file():
        raise ModelLoadError(f"{folder}: component scheduler/ is missing (no scheduler_config.json)")
    sched_cfg = read_config_json(sched_path)
    recommended = read_config_json(folder / "recommended.json") if (folder / "recommended.json").is_file() else {}
    prompt = recommended.get("prompt", "")
    if not isinstance(prompt, str):
        raise ModelLoadError(f"{folder / 'recommended.json'}: prompt must be a string, got {prompt!r}")
    return build_text_model(kind, unet, vae, encoders, tokenizers, sched_cfg, device, dtype, name=name or folder.name,
                            source=str(folder), recommended_scales=read_recommended_scales(folder),
                            sample_prompt=prompt,
                            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)))


def build_text_model(kind: str, unet, vae, encoders: list, tokenizers: list, sched_cfg: dict, device: torch.device,
                     dtype: torch.dtype, *, name: str, source: str, recommended_scales: Optional[dict] = None,
                     sample_prompt: str = "", force_zeros_for_empty_prompt: bool = True) -> TextToImageModel:
    """The studio's model over loaded pipeline components (``kind``: the pipeline class name): what a
    pipeline folder opens to, and what a single-file checkpoint does once diffusers has loaded it."""
    ucfg = unet.config
    info = ModelInfo(
        name=name, sample_size=int(ucfg.sample_size), in_channels=int(ucfg.in_channels),
        prediction_type=sched_cfg.get("prediction_type", "epsilon"), scheduler_config=sched_cfg, source=source,
        recommended_scales=dict(recommended_scales or {}), pipeline=kind,
        vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        text_encoders=[f"{e.__class__.__name__}, hidden size {e.config.hidden_size}, "
                       f"{e.config.num_hidden_layers} layers" for e in encoders],
        max_prompt_tokens=int(tokenizers[0].model_max_length), sample_prompt=sample_prompt,
    )
    return TextToImageModel(fix_dtype(unet), vae, encoders, tokenizers, info, device, dtype,
                            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)


def load_tiny_autoencoder(path, device: torch.device):
    """An ``AutoencoderTiny`` folder (TAESD and kin), for previews: config.json + safetensors weights."""
    from diffusers import AutoencoderTiny

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such folder; --preview-vae takes an AutoencoderTiny folder")
    sub = folder.parent
    cfg_path, config = _model_config(sub, folder.name, AutoencoderTiny)
    check_config_limits(config, TINY_VAE_LIMITS, cfg_path)
    check_fits(_count(cfg_path, "AutoencoderTiny", lambda: AutoencoderTiny.from_config(config)), {}, device,
               torch.float32, str(cfg_path), ModelLoadError)
    module = _diffusers_module(sub, folder.name, AutoencoderTiny, allow_pickle=False)
    return module.to(device=device, dtype=torch.float32)


def pipeline_kind(path) -> Optional[str]:
    """The pipeline class named in a folder's model_index.json, or None."""
    try:
        return json.loads((Path(path) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
