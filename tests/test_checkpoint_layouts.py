"""Full-size headers of real single-file checkpoints (SD 1.5, SD 2.1, SDXL base and refiner), and the
proof that they are real: diffusers' own single-file converters map every generated original-layout
name onto exactly the state dict of the diffusers model of that family, shape for shape.

The original layouts (CompVis ``ldm`` / Stability ``sgm``): UNet ``openaimodel.UNetModel`` (ResBlock:
``in_layers``/``emb_layers``/``out_layers``/``skip_connection``; SpatialTransformer: ``norm``,
``proj_in``, ``transformer_blocks.N.{attn1,attn2,ff,norm1..3}``, ``proj_out``), VAE
``diffusionmodules.model.Encoder/Decoder``, CLIP ViT-L/14 in transformers' layout, OpenCLIP text
towers (``transformer.resblocks.N.{ln_1,attn.in_proj_weight,…}``). Other checkpoint tests import the
builders (``sd15``, ``sd21``, ``sdxl_base``, ``sdxl_refiner``) and ``write_sparse_safetensors``.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

BYTES = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}
Shapes = dict[str, tuple[int, ...]]

# diffusers model configs of each family (the values of the published model repositories' config.json)
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD21_UNET = dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
SDXL_UNET = dict(sample_size=128, block_out_channels=[320, 640, 1280],
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
REFINER_UNET = dict(sample_size=128, block_out_channels=[384, 768, 1536, 1536],
                    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                    transformer_layers_per_block=4, attention_head_dim=[6, 12, 24, 24], cross_attention_dim=1280,
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2560)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
           block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
           up_block_types=["UpDecoderBlock2D"] * 4)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
OPEN_CLIP_H = dict(width=1024, layers=24, mlp=4096)
OPEN_CLIP_G = dict(width=1280, layers=32, mlp=5120)
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")  # LatentDiffusion's registered buffers


# ---- the original (LDM / SGM) layout --------------------------------------------------------------------------

def _resblock(p: str, cin: int, cout: int, temb: int) -> Shapes:
    s = {f"{p}.in_layers.0.weight": (cin,), f"{p}.in_layers.0.bias": (cin,),
         f"{p}.in_layers.2.weight": (cout, cin, 3, 3), f"{p}.in_layers.2.bias": (cout,),
         f"{p}.emb_layers.1.weight": (cout, temb), f"{p}.emb_layers.1.bias": (cout,),
         f"{p}.out_layers.0.weight": (cout,), f"{p}.out_layers.0.bias": (cout,),
         f"{p}.out_layers.3.weight": (cout, cout, 3, 3), f"{p}.out_layers.3.bias": (cout,)}
    if cin != cout:
        s |= {f"{p}.skip_connection.weight": (cout, cin, 1, 1), f"{p}.skip_connection.bias": (cout,)}
    return s


def _transformer(p: str, c: int, depth: int, ctx: int, linear: bool) -> Shapes:
    proj = (c, c) if linear else (c, c, 1, 1)
    s = {f"{p}.norm.weight": (c,), f"{p}.norm.bias": (c,), f"{p}.proj_in.weight": proj, f"{p}.proj_in.bias": (c,),
         f"{p}.proj_out.weight": proj, f"{p}.proj_out.bias": (c,)}
    for d in range(depth):
        b = f"{p}.transformer_blocks.{d}"
        for attn, kv in (("attn1", c), ("attn2", ctx)):
            s |= {f"{b}.{attn}.to_q.weight": (c, c), f"{b}.{attn}.to_k.weight": (c, kv),
                  f"{b}.{attn}.to_v.weight": (c, kv), f"{b}.{attn}.to_out.0.weight": (c, c),
                  f"{b}.{attn}.to_out.0.bias": (c,)}
        s |= {f"{b}.ff.net.0.proj.weight": (8 * c, c), f"{b}.ff.net.0.proj.bias": (8 * c,),
              f"{b}.ff.net.2.weight": (c, 4 * c), f"{b}.ff.net.2.bias": (c,)}
        for n in (1, 2, 3):
            s |= {f"{b}.norm{n}.weight": (c,), f"{b}.norm{n}.bias": (c,)}
    return s


def ldm_unet(config: dict, prefix: str = "model.diffusion_model.", in_channels: int = 4) -> Shapes:
    """``openaimodel.UNetModel``'s state dict names and shapes for the diffusers UNet ``config``."""
    channels = config.get("block_out_channels", [320, 640, 1280, 1280])
    kinds = config.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
    depths = config.get("transformer_layers_per_block", 1)
    depths = [depths] * len(channels) if isinstance(depths, int) else depths
    attention = [k.startswith("CrossAttn") for k in kinds]
    n_res, ctx, linear = config.get("layers_per_block", 2), config["cross_attention_dim"], \
        config.get("use_linear_projection", False)
    mc, temb = channels[0], 4 * channels[0]
    s: Shapes = {"time_embed.0.weight": (temb, mc), "time_embed.0.bias": (temb,),
                 "time_embed.2.weight": (temb, temb), "time_embed.2.bias": (temb,),
                 "input_blocks.0.0.weight": (mc, in_channels, 3, 3), "input_blocks.0.0.bias": (mc,)}
    adm = config.get("projection_class_embeddings_input_dim")
    if adm:
        s |= {"label_emb.0.0.weight": (temb, adm), "label_emb.0.0.bias": (temb,),
              "label_emb.0.2.weight": (temb, temb), "label_emb.0.2.bias": (temb,)}
    skips, ch, k = [mc], mc, 1
    for level, cout in enumerate(channels):
        for _ in range(n_res):
            s |= _resblock(f"input_blocks.{k}.0", ch, cout, temb)
            ch = cout
            if attention[level]:
                s |= _transformer(f"input_blocks.{k}.1", ch, depths[level], ctx, linear)
            skips.append(ch)
            k += 1
        if level != len(channels) - 1:
            s |= {f"input_blocks.{k}.0.op.weight": (ch, ch, 3, 3), f"input_blocks.{k}.0.op.bias": (ch,)}
            skips.append(ch)
            k += 1
    s |= _resblock("middle_block.0", ch, ch, temb) | _transformer("middle_block.1", ch, depths[-1], ctx, linear)
    s |= _resblock("middle_block.2", ch, ch, temb)
    k = 0
    for level in reversed(range(len(channels))):
        cout = channels[level]
        for j in range(n_res + 1):
            s |= _resblock(f"output_blocks.{k}.0", ch + skips.pop(), cout, temb)
            ch, at = cout, 1
            if attention[level]:
                s |= _transformer(f"output_blocks.{k}.1", ch, depths[level], ctx, linear)
                at = 2
            if level and j == n_res:
                s |= {f"output_blocks.{k}.{at}.conv.weight": (ch, ch, 3, 3), f"output_blocks.{k}.{at}.conv.bias": (ch,)}
            k += 1
    s |= {"out.0.weight": (mc,), "out.0.bias": (mc,), "out.2.weight": (4, mc, 3, 3), "out.2.bias": (4,)}
    return {prefix + k: v for k, v in s.items()}


def _vae_res(p: str, cin: int, cout: int) -> Shapes:
    s = {f"{p}.norm1.weight": (cin,), f"{p}.norm1.bias": (cin,), f"{p}.conv1.weight": (cout, cin, 3, 3),
         f"{p}.conv1.bias": (cout,), f"{p}.norm2.weight": (cout,), f"{p}.norm2.bias": (cout,),
         f"{p}.conv2.weight": (cout, cout, 3, 3), f"{p}.conv2.bias": (cout,)}
    if cin != cout:
        s |= {f"{p}.nin_shortcut.weight": (cout, cin, 1, 1), f"{p}.nin_shortcut.bias": (cout,)}
    return s


def _vae_mid(p: str, c: int) -> Shapes:
    s = _vae_res(f"{p}.block_1", c, c) | _vae_res(f"{p}.block_2", c, c)
    s |= {f"{p}.attn_1.norm.weight": (c,), f"{p}.attn_1.norm.bias": (c,)}
    for n in ("q", "k", "v", "proj_out"):
        s |= {f"{p}.attn_1.{n}.weight": (c, c, 1, 1), f"{p}.attn_1.{n}.bias": (c,)}
    return s


def ldm_vae(prefix: str = "first_stage_model.", ch: int = 128, mult=(1, 2, 4, 4), n_res: int = 2, z: int = 4) -> Shapes:
    """``AutoencoderKL`` (``diffusionmodules.model.Encoder``/``Decoder``) names and shapes."""
    s: Shapes = {"encoder.conv_in.weight": (ch, 3, 3, 3), "encoder.conv_in.bias": (ch,)}
    cin = ch
    for i, m in enumerate(mult):
        for j in range(n_res):
            s |= _vae_res(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mult) - 1:
            s |= {f"encoder.down.{i}.downsample.conv.weight": (cin, cin, 3, 3),
                  f"encoder.down.{i}.downsample.conv.bias": (cin,)}
    s |= _vae_mid("encoder.mid", cin)
    s |= {"encoder.norm_out.weight": (cin,), "encoder.norm_out.bias": (cin,),
          "encoder.conv_out.weight": (2 * z, cin, 3, 3), "encoder.conv_out.bias": (2 * z,),
          "quant_conv.weight": (2 * z, 2 * z, 1, 1), "quant_conv.bias": (2 * z,),
          "post_quant_conv.weight": (z, z, 1, 1), "post_quant_conv.bias": (z,)}
    cin = ch * mult[-1]
    s |= {"decoder.conv_in.weight": (cin, z, 3, 3), "decoder.conv_in.bias": (cin,)}
    s |= _vae_mid("decoder.mid", cin)
    for i in reversed(range(len(mult))):
        for j in range(n_res + 1):
            s |= _vae_res(f"decoder.up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i != 0:
            s |= {f"decoder.up.{i}.upsample.conv.weight": (cin, cin, 3, 3), f"decoder.up.{i}.upsample.conv.bias": (cin,)}
    s |= {"decoder.norm_out.weight": (cin,), "decoder.norm_out.bias": (cin,),
          "decoder.conv_out.weight": (3, cin, 3, 3), "decoder.conv_out.bias": (3,)}
    return {prefix + k: v for k, v in s.items()}


def clip_l(prefix: str, width: int = 768, layers: int = 12, mlp: int = 3072) -> Shapes:
    """OpenAI CLIP ViT-L/14's text model as the original files hold it: the ``text_model.*`` state dict
    of transformers' ``CLIPTextModel`` (as saved by transformers 4), with its ``position_ids`` buffer."""
    w = width
    s: Shapes = {"text_model.embeddings.token_embedding.weight": (49408, w),
                 "text_model.embeddings.position_embedding.weight": (77, w),
                 "text_model.embeddings.position_ids": (1, 77),
                 "text_model.final_layer_norm.weight": (w,), "text_model.final_layer_norm.bias": (w,)}
    for i in range(layers):
        b = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s |= {f"{b}.self_attn.{proj}.weight": (w, w), f"{b}.self_attn.{proj}.bias": (w,)}
        s |= {f"{b}.layer_norm1.weight": (w,), f"{b}.layer_norm1.bias": (w,), f"{b}.layer_norm2.weight": (w,),
              f"{b}.layer_norm2.bias": (w,), f"{b}.mlp.fc1.weight": (mlp, w), f"{b}.mlp.fc1.bias": (mlp,),
              f"{b}.mlp.fc2.weight": (w, mlp), f"{b}.mlp.fc2.bias": (w,)}
    return {prefix + k: v for k, v in s.items()}


def open_clip(prefix: str, width: int, layers: int, mlp: int) -> Shapes:
    """An OpenCLIP text tower (``open_clip.model.CLIP`` without its visual tower)."""
    w = width
    s: Shapes = {"positional_embedding": (77, w), "token_embedding.weight": (49408, w), "ln_final.weight": (w,),
                 "ln_final.bias": (w,), "text_projection": (w, w), "logit_scale": ()}
    for i in range(layers):
        b = f"transformer.resblocks.{i}"
        s |= {f"{b}.ln_1.weight": (w,), f"{b}.ln_1.bias": (w,), f"{b}.attn.in_proj_weight": (3 * w, w),
              f"{b}.attn.in_proj_bias": (3 * w,), f"{b}.attn.out_proj.weight": (w, w), f"{b}.attn.out_proj.bias": (w,),
              f"{b}.ln_2.weight": (w,), f"{b}.ln_2.bias": (w,), f"{b}.mlp.c_fc.weight": (mlp, w),
              f"{b}.mlp.c_fc.bias": (mlp,), f"{b}.mlp.c_proj.weight": (w, mlp), f"{b}.mlp.c_proj.bias": (w,)}
    return {prefix + k: v for k, v in s.items()}


# ---- whole checkpoints: name -> (safetensors dtype, shape) ------------------------------------------------------

def _typed(shapes: Shapes, dtype: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {k: ("I64" if k.endswith("position_ids") else dtype, v) for k, v in shapes.items()}


def sd15(dtype: str = "F16", in_channels: int = 4, ema: bool = False) -> dict:
    """SD 1.5 (``v1-5-pruned*.safetensors``): UNet, VAE, CLIP-L, the schedule buffers, optionally EMA."""
    unet = ldm_unet(SD15_UNET, in_channels=in_channels)
    t = _typed(unet | ldm_vae() | clip_l("cond_stage_model.transformer."), dtype)
    t |= {name: ("F32", (1000,)) for name in SCHEDULE_BUFFERS}
    if ema:  # LitEma: the UNet's names without "model." and without dots, plus two counters
        t |= {"model_ema." + "".join(k.split(".")[1:]): (dtype, v) for k, v in unet.items()}
        t |= {"model_ema.decay": ("F32", ()), "model_ema.num_updates": ("I64", ())}
    return t


def sd21(dtype: str = "F16") -> dict:
    """SD 2.1 (``v2-1_768-ema-pruned.safetensors``): UNet, VAE, OpenCLIP ViT-H/14."""
    return _typed(ldm_unet(SD21_UNET) | ldm_vae() | open_clip("cond_stage_model.model.", **OPEN_CLIP_H), dtype) \
        | {name: ("F32", (1000,)) for name in SCHEDULE_BUFFERS}


def sdxl_base(dtype: str = "F16", in_channels: int = 4, text_encoders: bool = True) -> dict:
    """SDXL base 1.0 (``sd_xl_base_1.0.safetensors``): UNet, VAE, CLIP-L and OpenCLIP ViT-bigG/14."""
    s = ldm_unet(SDXL_UNET, in_channels=in_channels) | ldm_vae()
    if text_encoders:
        s |= clip_l("conditioner.embedders.0.transformer.") | open_clip("conditioner.embedders.1.model.", **OPEN_CLIP_G)
    return _typed(s, dtype)


def sdxl_refiner(dtype: str = "F16") -> dict:
    """SDXL refiner 1.0 (``sd_xl_refiner_1.0.safetensors``): UNet, VAE, OpenCLIP ViT-bigG/14 only."""
    return _typed(ldm_unet(REFINER_UNET) | ldm_vae() | open_clip("conditioner.embedders.0.model.", **OPEN_CLIP_G),
                  dtype)


def write_sparse_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    """A safetensors file with a real header over a zero-filled sparse data region (no disk space taken)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the spec's recommended alignment
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    return path


# ---- the proof: diffusers' converters map these names onto diffusers' models -------------------------------------

def meta_shapes(tensors: dict) -> dict[str, torch.Tensor]:
    """The header as tensors on the meta device (what the converters read: names and shapes)."""
    return {k: torch.empty(shape, device="meta") for k, (_, shape) in tensors.items()}


def state_shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def converted_shapes(d: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in d.items()}


def text_shapes(d: dict) -> dict[str, tuple]:
    """Text-model names without the ``text_model.`` level (which transformers 5's CLIPTextModel dropped
    from its own state dict and maps on loading)."""
    return {k.removeprefix("text_model."): v for k, v in d.items()}


@pytest.mark.parametrize("build, config", [(sd15, SD15_UNET), (sd21, SD21_UNET), (sdxl_base, SDXL_UNET),
                                           (sdxl_refiner, REFINER_UNET)], ids=["sd15", "sd21", "sdxl", "refiner"])
def test_unet_layout_converts_onto_the_diffusers_unet(build, config):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    converted = convert_ldm_unet_checkpoint(meta_shapes(build()), dict(unet.config))
    assert converted_shapes(converted) == state_shapes(unet)


def test_vae_layout_converts_onto_the_diffusers_vae():
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with torch.device("meta"):
        vae = AutoencoderKL(**VAE)
    converted = convert_ldm_vae_checkpoint(meta_shapes(sd15()), dict(vae.config))
    assert converted_shapes(converted) == state_shapes(vae)


def test_clip_l_layout_converts_onto_the_transformers_text_model():
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    converted = text_shapes(converted_shapes(convert_ldm_clip_checkpoint(meta_shapes(sd15()))))
    converted.pop("embeddings.position_ids")  # a buffer transformers no longer saves
    assert converted == text_shapes(state_shapes(model))


@pytest.mark.parametrize("build, prefix, spec, layers, projection", [
    (sd21, "cond_stage_model.model.", OPEN_CLIP_H, 23, False),  # diffusers drops SD 2's last layer (penultimate skip)
    (sdxl_base, "conditioner.embedders.1.model.", OPEN_CLIP_G, 32, True),
    (sdxl_refiner, "conditioner.embedders.0.model.", OPEN_CLIP_G, 32, True)], ids=["sd21", "sdxl", "refiner"])
def test_open_clip_layout_converts_onto_the_transformers_text_model(build, prefix, spec, layers, projection):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    w = spec["width"]
    config = CLIPTextConfig(vocab_size=49408, hidden_size=w, intermediate_size=spec["mlp"], num_hidden_layers=layers,
                            num_attention_heads=w // 64, max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=w)
    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    converted = convert_open_clip_checkpoint(model, meta_shapes(build()), prefix=prefix)
    assert text_shapes(converted_shapes(converted)) == text_shapes(state_shapes(model))
