"""Family detection and ``studio info`` on full-size single files: real SD 1.5, SD 2.1, SDXL base and
refiner headers (test_checkpoint_layouts.py, checked against diffusers' converters) over zero-filled
sparse data. Parameter counts are checked against the diffusers / transformers models of each family
built on the meta device; refusals on real files of the kinds users drop in by mistake."""
from __future__ import annotations

import pytest
import torch
from test_checkpoint_layouts import (
    CLIP_L,
    OPEN_CLIP_G,
    OPEN_CLIP_H,
    REFINER_UNET,
    SD15_UNET,
    SD21_UNET,
    SDXL_UNET,
    VAE,
    clip_l,
    ldm_unet,
    ldm_vae,
    open_clip,
    sd15,
    sd21,
    sdxl_base,
    sdxl_refiner,
    write_sparse_safetensors,
)

from studio.checkpoints import (
    FAMILIES,
    CheckpointError,
    UnsupportedCheckpoint,
    detect_family,
    inspect_checkpoint,
    is_single_file,
    read_header,
)
from studio.checkpoints.families import CONV_IN, LABEL_EMB, SD1, SD2, SDXL, SDXL_REFINER


def meta_count(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def unet_count(config) -> int:
    from diffusers import UNet2DConditionModel
    return meta_count(lambda: UNet2DConditionModel(**config))


def vae_count() -> int:
    from diffusers import AutoencoderKL
    return meta_count(lambda: AutoencoderKL(**VAE))


def text_count(width: int, layers: int, mlp: int, act: str, projection: bool = False) -> int:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                            num_attention_heads=width // 64, max_position_embeddings=77, hidden_act=act,
                            projection_dim=width)
    return meta_count(lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(config))


CLIP_L_COUNT = dict(width=CLIP_L["hidden_size"], layers=CLIP_L["num_hidden_layers"], mlp=CLIP_L["intermediate_size"],
                    act="quick_gelu")


def one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


# ---- the four families -----------------------------------------------------------------------------------------

def test_sd15_is_detected_with_its_keys_counts_ema_and_memory(tmp_path):
    path = write_sparse_safetensors(tmp_path / "v1-5-pruned.safetensors", sd15(ema=True))
    info = inspect_checkpoint(path)
    assert info.family is SD1 and info.detection.diffusers_type == "v1"
    decided = {e.key: e.shape for e in info.detection.evidence}
    assert decided[CONV_IN] == (320, 4, 3, 3)
    assert decided["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert decided[LABEL_EMB] is None
    assert decided["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 768)
    unet, vae, text = unet_count(SD15_UNET), vae_count(), text_count(**CLIP_L_COUNT)
    assert unet == 859_520_964  # the published size of SD 1.5's UNet
    assert info.component("unet").parameters == unet
    assert info.component("vae").parameters == vae
    assert info.component("text_encoder").parameters == text
    assert info.component("unet").dtypes == ("F16",)
    assert info.has_ema and info.component("ema").parameters == unet
    assert info.component("other").tensors == 12 and not info.component("other").loaded
    assert info.missing == ()
    position_ids = 77 * 8  # the text encoder's int64 buffer stays as stored
    assert info.weights_bytes(torch.float16) == 2 * (unet + vae + text) + position_ids
    assert info.weights_bytes(torch.float32) == 4 * (unet + vae + text) + position_ids
    assert info.weights_bytes() == info.weights_bytes(torch.float16)  # stored in F16
    assert info.header.file_size == path.stat().st_size
    assert info.prediction.prediction_type == "epsilon" and info.native_size == 512


def test_sd21_is_detected_as_sd2_and_defaults_to_v_prediction(tmp_path):
    path = write_sparse_safetensors(tmp_path / "v2-1_768-ema-pruned.safetensors", sd21(dtype="F32"))
    info = inspect_checkpoint(path)
    assert info.family is SD2 and info.detection.diffusers_type == "v2"
    decided = {e.key: e.shape for e in info.detection.evidence}
    assert decided["cond_stage_model.model.token_embedding.weight"] == (49408, 1024)
    assert info.component("unet").parameters == unet_count(SD21_UNET)
    w = OPEN_CLIP_H["width"]  # the file holds all 24 layers, the text projection and logit_scale
    assert info.component("text_encoder").parameters == text_count(w, 24, OPEN_CLIP_H["mlp"], "gelu") + w * w + 1
    assert info.component("unet").dtypes == ("F32",) and not info.has_ema
    assert info.prediction.prediction_type == "v_prediction" and info.native_size == 768


@pytest.mark.parametrize("build, family, config, diffusers_type", [
    (sdxl_base, SDXL, SDXL_UNET, "xl_base"), (sdxl_refiner, SDXL_REFINER, REFINER_UNET, "xl_refiner")],
    ids=["base", "refiner"])
def test_sdxl_is_detected_with_both_conditionings(tmp_path, build, family, config, diffusers_type):
    path = write_sparse_safetensors(tmp_path / "sd_xl.safetensors", build())
    info = inspect_checkpoint(path)
    assert info.family is family and info.detection.diffusers_type == diffusers_type
    decided = {e.key: e.shape for e in info.detection.evidence}
    assert decided[LABEL_EMB][1] == family.adm_in_channels
    context = [k for k in decided if k.endswith("attn2.to_k.weight")]
    assert len(context) == 1 and decided[context[0]][1] == family.context_dim
    assert info.component("unet").parameters == unet_count(config)
    g = text_count(OPEN_CLIP_G["width"], OPEN_CLIP_G["layers"], OPEN_CLIP_G["mlp"], "gelu", projection=True)
    assert info.component("text_encoder_2").parameters == g + 1  # + logit_scale, which diffusers drops
    if family is SDXL:
        assert info.component("unet").parameters == 2_567_463_684  # the published size of SDXL's UNet
        assert info.component("text_encoder").parameters == text_count(**CLIP_L_COUNT)
    else:
        assert info.component("text_encoder") is None
    assert info.prediction.prediction_type == "epsilon" and info.native_size == 1024


def test_the_describe_text_names_family_keys_components_and_memory(tmp_path):
    path = write_sparse_safetensors(tmp_path / "m.safetensors", sdxl_base(),
                                    metadata={"modelspec.title": "My \x1b[31mmodel", "long": "x" * 500})
    text = inspect_checkpoint(path).describe()
    for words in ("Stable Diffusion XL base", CONV_IN, "[1280, 2816]", "OpenCLIP ViT-bigG/14 text encoder",
                  "2,567,463,684 parameters", "EMA weights: none", "in float16", "prediction: epsilon",
                  "modelspec.title"):
        assert words in text, words
    assert "\x1b" not in text and "x" * 100 not in text


def test_family_table_agrees_with_diffusers(monkeypatch, tmp_path):
    """Sizes and default prediction types are the ones diffusers' single-file loader uses."""
    from diffusers import DDIMScheduler
    from diffusers.loaders import single_file_utils as sfu

    monkeypatch.setattr(sfu, "SCHEDULER_DEFAULT_CONFIG", dict(sfu.SCHEDULER_DEFAULT_CONFIG))  # the loader mutates it
    builds = {"v1": sd15, "v2": sd21, "xl_base": sdxl_base, "xl_refiner": sdxl_refiner}
    for family in FAMILIES:
        assert sfu.DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP[family.diffusers_type] == family.size
        shapes = {k: torch.empty(s, device="meta") for k, (_, s) in builds[family.diffusers_type]().items()}
        scheduler = sfu._legacy_load_scheduler(DDIMScheduler, shapes, "scheduler")
        assert scheduler.config.prediction_type == family.default_prediction, family.name


def test_a_file_without_text_encoders_is_detected_and_says_what_is_missing(tmp_path):
    path = write_sparse_safetensors(tmp_path / "unet_only.safetensors", sdxl_base(text_encoders=False))
    info = inspect_checkpoint(path)
    assert info.family is SDXL and info.missing == ("text_encoder", "text_encoder_2")
    assert "missing: text_encoder, text_encoder_2" in info.describe()


def test_detection_works_on_an_opted_in_pickle(tmp_path):
    path = tmp_path / "tiny.ckpt"  # SD 1.x names with small tensors: detection reads names and shapes only
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 768),
             "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 768),
             "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}
    torch.save({"state_dict": state, "global_step": 1}, path)
    assert detect_family(read_header(path, allow_pickle=True)).family is SD1
    with pytest.raises(CheckpointError, match="allow-pickle"):
        inspect_checkpoint(path)


# ---- refusals ----------------------------------------------------------------------------------------------------

LORA_KOHYA = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": ("F16", (4, 320, 1, 1)),
              "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": ("F16", (320, 4, 1, 1)),
              "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ("F16", ()),
              "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": ("F16", (4, 768))}
LORA_PEFT = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": ("F32", (4, 320)),
             "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": ("F32", (320, 4))}
SD3 = {"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": ("F16", (9216,)),
       "model.diffusion_model.pos_embed": ("F16", (1, 36864, 1536)),
       "model.diffusion_model.x_embedder.proj.weight": ("F16", (1536, 16, 2, 2))}
FLUX = {"double_blocks.0.img_attn.norm.key_norm.scale": ("BF16", (128,)), "img_in.weight": ("BF16", (3072, 64)),
        "guidance_in.in_layer.bias": ("BF16", (3072,))}
CONTROLNET = {"control_model.time_embed.0.weight": ("F16", (1280, 320)),
              "control_model.input_hint_block.0.weight": ("F16", (16, 3, 3, 3)),
              "control_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3))}
DIFFUSERS_UNET = {"conv_in.weight": ("F16", (320, 4, 3, 3)), "time_embedding.linear_1.weight": ("F16", (1280, 320)),
                  "down_blocks.0.resnets.0.conv1.weight": ("F16", (320, 320, 3, 3))}


def _typed(shapes, dtype="F16"):
    return {k: (dtype, v) for k, v in shapes.items()}


def _sd15_with_open_clip():
    t = {k: v for k, v in sd15().items() if not k.startswith("cond_stage_model.")}
    return t | _typed(open_clip("cond_stage_model.model.", **OPEN_CLIP_H))


def _sd21_unclip():
    unet = ldm_unet(SD21_UNET | {"projection_class_embeddings_input_dim": 1024})
    return _typed(unet | ldm_vae() | open_clip("cond_stage_model.model.", **OPEN_CLIP_H))


REFUSED = [
    ("sd15 inpainting", lambda: sd15(in_channels=9), "inpainting", ["inpainting", "9 input channels", CONV_IN]),
    ("sdxl inpainting", lambda: sdxl_base(in_channels=9), "inpainting", ["inpainting", "[320, 9, 3, 3]"]),
    ("instruct-pix2pix", lambda: sd15(in_channels=8), "instruct-pix2pix", ["InstructPix2Pix"]),
    ("sd3", lambda: SD3, "other-family", ["Stable Diffusion 3", "'sd3'"]),
    ("flux", lambda: FLUX, "other-family", ["FLUX", "'flux-dev'"]),
    ("controlnet", lambda: CONTROLNET, "controlnet", ["ControlNet"]),
    ("controlnet with base", lambda: sd15() | CONTROLNET, "controlnet", ["ControlNet", "control_model"]),
    ("kohya lora", lambda: LORA_KOHYA, "lora", ["LoRA (kohya", "--lora"]),
    ("peft lora", lambda: LORA_PEFT, "lora", ["LoRA (diffusers / PEFT", "--lora"]),
    ("vae", lambda: _typed(ldm_vae(prefix="")), "vae", ["standalone VAE", "--vae"]),
    ("embedding", lambda: {"emb_params": ("F32", (2, 768))}, "embedding", ["textual-inversion"]),
    ("diffusers unet", lambda: DIFFUSERS_UNET, "diffusers-unet", ["diffusers-format UNet", "folder"]),
    ("text encoder alone", lambda: _typed(clip_l("")), "text-encoder", ["text encoder"]),
    ("playground", lambda: sdxl_base() | {"edm_mean": ("F32", (1, 4, 1, 1)), "edm_std": ("F32", (1, 4, 1, 1))},
     "edm", ["Playground v2.5"]),
    ("unclip", _sd21_unclip, "unclip", ["unCLIP"]),
    ("mixed text encoder", _sd15_with_open_clip, "inconsistent", ["Stable Diffusion 1.x", "cond_stage_model.model.",
                                                                  "mixes"]),
    ("unknown", lambda: {"foo.bar.weight": ("F32", (3, 3))}, "unknown", ["not a Stable Diffusion checkpoint", "'foo.'"]),
    ("empty", dict, "empty", ["no tensors"]),
]


@pytest.mark.parametrize("name, build, kind, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_files_the_studio_does_not_run_are_refused_saying_what_they_are(tmp_path, name, build, kind, words):
    path = write_sparse_safetensors(tmp_path / "model.safetensors", build())
    with pytest.raises(UnsupportedCheckpoint) as e:
        inspect_checkpoint(path)
    assert e.value.kind == kind
    msg = one_line(e, path)
    for w in words:
        assert w in msg, (w, msg)


def test_is_single_file_tells_files_from_folders(tmp_path):
    path = write_sparse_safetensors(tmp_path / "m.safetensors", {"a": ("F16", (2,))})
    assert is_single_file(path) and not is_single_file(tmp_path) and not is_single_file(tmp_path / "x.safetensors")
    assert not is_single_file("default")


def _with(build, **changed):
    return lambda: {k: (changed[k] if k in changed else v) for k, v in build().items()}


TO_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
DAMAGED = [
    ("conv_in not a convolution", _with(sd15, **{CONV_IN: ("F16", (320,))}), "not a convolution"),
    ("cross-attention not a matrix", _with(sd15, **{TO_K: ("F16", ())}), "not a matrix"),
    ("label_emb not a matrix", _with(sdxl_base, **{LABEL_EMB: ("F16", (7,))}), "not a matrix"),
    ("two context widths", _with(sd15, **{TO_K: ("F16", (320, 1024))}), "different widths"),
    ("text encoder of the wrong width", _with(sd15, **{
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": ("F16", (49408, 1024))}),
     "[vocabulary, 768]"),
]


@pytest.mark.parametrize("name, build, words", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_or_mixed_layout_is_refused_in_one_line(tmp_path, name, build, words):
    path = write_sparse_safetensors(tmp_path / "model.safetensors", build())
    with pytest.raises(UnsupportedCheckpoint) as e:
        inspect_checkpoint(path)
    assert e.value.kind == "inconsistent" and words in one_line(e, path)
