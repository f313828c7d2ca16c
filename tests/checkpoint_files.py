"""Tiny Stable Diffusion 1.x-like and SDXL-like pipelines, written as single-file checkpoints in the
original (CompVis ``ldm`` / Stability ``sgm``) layout, with a config folder per family to open them.

The networks are small but keep what family detection reads: SD 1.x cross-attends to 768-wide CLIP-L
features; SDXL to 2048 = 768 + 1280 (CLIP-L and an OpenCLIP-bigG-wide second encoder with a 1280
projection) with 2816 = 1280 + 6 × 256 added-conditioning inputs. Each text encoder has one layer and
the byte-level tokenizer of ``text_pipelines`` (its vocabulary is small, its files ship in the folder).

The original layout's names and shapes come from ``test_checkpoint_layouts``' builders (``ldm_unet``,
``ldm_vae``, ``clip_l``, ``open_clip``) for the tiny configs. The inverse of diffusers' conversion is
derived by running diffusers' own converters forward on *index* tensors (each element holds its
position in one flat buffer): every converted weight then says which file elements it came from, and
the diffusers pipeline's weights are scattered back there. A file element no converter reads is an
error, so the helper checks itself; loading the file must give back the pipeline's weights exactly.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from test_checkpoint_layouts import clip_l, ldm_unet, ldm_vae, open_clip
from text_pipelines import SD_SCHEDULER, tiny_vae, write_clip_tokenizer

SDXL_SCHEDULER = {**SD_SCHEDULER, "timestep_spacing": "leading"}
POSITIONS = 77  # the text encoders' positions (the tokenizer pads to the shipped configs' 77)
UNUSED = ("position_ids", "logit_scale")  # saved in real files, read by no converter
SD1_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=8)
SDXL_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, transformer_layers_per_block=(1, 2),
                 projection_class_embeddings_input_dim=2816, cross_attention_dim=2048, norm_num_groups=8)
REFINER_UNET = {**SDXL_UNET, "cross_attention_dim": 1280, "projection_class_embeddings_input_dim": 2560}  # 1280 + 5 × 256
VAE = dict(ch=16, mult=(1, 2), n_res=1, z=4)  # tiny_vae() in the original layout
REFINER_CLIP_G = "conditioner.embedders.0.model."


def text_config(vocab: int, width: int, act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, hidden_size=width,
                          intermediate_size=64, num_attention_heads=width // 64, num_hidden_layers=1,
                          max_position_embeddings=POSITIONS, vocab_size=vocab, projection_dim=width, hidden_act=act)


def tiny_pipeline(kind: str, tokenizer_dir: Path, seed: int = 0):
    """A random tiny ``StableDiffusionPipeline`` (``kind`` "sd1"), ``StableDiffusionXLPipeline`` ("sdxl") or
    ``StableDiffusionXLImg2ImgPipeline`` ("sdxl-refiner": the second text encoder only, aesthetic score)."""
    from diffusers import (DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = write_clip_tokenizer(tokenizer_dir, max_length=POSITIONS)
    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    if kind == "sd1":
        return StableDiffusionPipeline(
            vae=tiny_vae(), text_encoder=CLIPTextModel(text_config(vocab, 768, "quick_gelu")), tokenizer=tok,
            unet=UNet2DConditionModel(**SD1_UNET), scheduler=DDIMScheduler.from_config(SD_SCHEDULER),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if kind == "sdxl-refiner":
        return StableDiffusionXLImg2ImgPipeline(
            vae=tiny_vae(), text_encoder=None, text_encoder_2=CLIPTextModelWithProjection(text_config(vocab, 1280, "gelu")),
            tokenizer=None, tokenizer_2=tok, unet=UNet2DConditionModel(**REFINER_UNET),
            scheduler=DDIMScheduler.from_config(SDXL_SCHEDULER), requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False, add_watermarker=False)
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=CLIPTextModel(text_config(vocab, 768, "quick_gelu")),
        text_encoder_2=CLIPTextModelWithProjection(text_config(vocab, 1280, "gelu")), tokenizer=tok, tokenizer_2=tok,
        unet=UNet2DConditionModel(**SDXL_UNET), scheduler=DDIMScheduler.from_config(SDXL_SCHEDULER),
        add_watermarker=False)


def original_layout(kind: str, vocab: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tiny pipeline's single file."""
    def text(shapes: dict) -> dict:
        return {k: ((vocab, v[1]) if k.endswith("token_embedding.weight") else
                    (POSITIONS, v[1]) if k.endswith(("position_embedding.weight", "positional_embedding")) else
                    (1, POSITIONS) if k.endswith("position_ids") else v) for k, v in shapes.items()}
    unet = {"sd1": SD1_UNET, "sdxl": SDXL_UNET, "sdxl-refiner": REFINER_UNET}[kind]
    shapes = ldm_unet({**unet, "block_out_channels": list(unet["block_out_channels"]),
                       "down_block_types": list(unet["down_block_types"])}) | ldm_vae(**VAE)
    if kind == "sd1":
        return shapes | text(clip_l("cond_stage_model.transformer.", 768, 1, 64))
    if kind == "sdxl-refiner":
        return shapes | text(open_clip(REFINER_CLIP_G, 1280, 1, 64))
    return shapes | text(clip_l("conditioner.embedders.0.transformer.", 768, 1, 64)) \
        | text(open_clip("conditioner.embedders.1.model.", 1280, 1, 64))


def _converted(kind: str, pipe, index: dict) -> list[tuple[dict, torch.nn.Module]]:
    """diffusers' converters applied to ``index``, each with the module whose weights they give."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)

    out = [(convert_ldm_unet_checkpoint(index, dict(pipe.unet.config)), pipe.unet),
           (convert_ldm_vae_checkpoint(index, dict(pipe.vae.config)), pipe.vae)]
    if kind == "sdxl-refiner":
        return out + [(convert_open_clip_checkpoint(pipe.text_encoder_2, index, prefix=REFINER_CLIP_G), pipe.text_encoder_2)]
    out.append((convert_ldm_clip_checkpoint(index), pipe.text_encoder))
    if kind == "sdxl":
        out.append((convert_open_clip_checkpoint(pipe.text_encoder_2, index, prefix="conditioner.embedders.1.model."),
                    pipe.text_encoder_2))
    return out


def original_state_dict(kind: str, pipe, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original layout (the inverse of diffusers' converters, derived from them)."""
    shapes = original_layout(kind, (pipe.text_encoder or pipe.text_encoder_2).config.vocab_size)
    index, offset = {}, 0
    for name, shape in shapes.items():
        n = int(torch.Size(shape).numel())
        index[name] = torch.arange(offset, offset + n, dtype=torch.float64).reshape(shape)
        offset += n
    flat = torch.zeros(offset, dtype=torch.float64)
    covered = torch.zeros(offset, dtype=torch.bool)
    for converted, module in _converted(kind, pipe, index):
        state = {k.removeprefix("text_model."): v for k, v in module.state_dict().items()}
        for key, where in converted.items():
            key = key.removeprefix("text_model.")
            if key in state:
                flat[where.long().flatten()] = state[key].double().flatten()
                covered[where.long().flatten()] = True
    out = {}
    for name, shape in shapes.items():
        lo = int(index[name].flatten()[0]) if index[name].numel() else 0
        span = slice(lo, lo + index[name].numel())
        if name.endswith("position_ids"):
            out[name] = torch.arange(POSITIONS, dtype=torch.int64).reshape(shape)
        elif name.endswith(UNUSED):
            out[name] = torch.full(shape, 4.6052, dtype=dtype)  # ln 100, CLIP's trained logit scale
        else:
            assert bool(covered[span].all()), f"no converter reads {name}"
            out[name] = flat[span].reshape(shape).to(dtype)
    return out


def write_checkpoint(path: Path, state: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def write_config_folder(pipe, folder: Path, tokenizer_dir: Path) -> Path:
    """The family's config folder for the tiny pipeline: what ``save_pretrained`` writes, without weights,
    with the byte-level tokenizer's vocab.json and merges.txt in each tokenizer folder."""
    staging = folder.with_name(folder.name + "-full")
    pipe.save_pretrained(str(staging), safe_serialization=True)
    for p in sorted(staging.rglob("*")):
        if p.is_file() and p.suffix != ".safetensors":
            target = folder / p.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).is_dir():
            for f in ("vocab.json", "merges.txt"):
                shutil.copyfile(tokenizer_dir / f, folder / name / f)
    shutil.rmtree(staging)
    return folder


def make_tiny_checkpoint(kind: str, root: Path, dtype: torch.dtype = torch.float32, seed: int = 0):
    """(pipeline, its single file, the config root holding ``<root>/configs/<family>``) for ``kind``."""
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root / f".{kind}-tokenizer"
    pipe = tiny_pipeline(kind, tok_dir, seed)
    configs = root / "configs"
    write_config_folder(pipe, configs / kind, tok_dir)
    path = write_checkpoint(root / f"{kind}-tiny.safetensors", original_state_dict(kind, pipe, dtype))
    return pipe, path, configs


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
