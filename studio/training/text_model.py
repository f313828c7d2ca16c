"""Configuration and export of the text-to-image latent model ``digits-text``.

A miniature Stable Diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models"), built from the same diffusers / transformers classes:

* ``AutoencoderKL``: 32x32 RGB <-> 8x8x4 latents (downsampling factor 4);
  ``config.scaling_factor`` = 1 / std of the training latents, as in SD (Sec. 4.3.2 / App. G);
* ``CLIPTextModel`` (Radford et al. 2021): a small causal transformer over the caption
  vocabulary; its last hidden states are the cross-attention context;
* ``UNet2DConditionModel`` with cross-attention at 8x8 and 4x4, predicting ε, or v
  (Salimans & Ho 2022) on a zero-terminal-SNR schedule;
* ``DDIMScheduler`` with SD's scaled-linear β schedule (0.00085..0.012, 1000 steps), optionally
  rescaled so that ᾱ_T = 0 (Lin et al. 2024, :func:`scheduler_config`).

:func:`export_pipeline` writes a folder that plain ``diffusers.StableDiffusionPipeline
.from_pretrained(folder)`` loads (``model_index.json``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``unet/``, ``scheduler/``; no safety checker or feature extractor).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 32,
    "mid_block_add_attention": False,
    "scaling_factor": 1.0,  # set from the training latents before export
}

TEXT_HIDDEN = 96
TEXT_CONFIG: dict = {  # vocab_size, bos/eos/pad ids come from the tokenizer
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 4 * TEXT_HIDDEN,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": TEXT_HIDDEN,
    "hidden_act": "quick_gelu",
}

UNET_CONFIG: dict = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [48, 96, 96],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": TEXT_HIDDEN,
    "attention_head_dim": 8,  # diffusers' SD-1 naming: the number of heads
    "norm_num_groups": 16,
    # A pooled text embedding added to the timestep embedding, beside cross-attention, as in
    # GLIDE (Nichol et al. 2022, Sec. 4: the final token embedding in place of ADM's class
    # embedding) and Imagen (Saharia et al. 2022); diffusers' TextTimeEmbedding pools the
    # hidden states by attention, so plain StableDiffusionPipeline still drives it.
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 4,
}

SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

# Tiny versions for the tests (same layout, a few thousand parameters each).
TINY_VAE_CONFIG = {**VAE_CONFIG, "block_out_channels": [8, 16, 16], "norm_num_groups": 4}
TINY_TEXT_CONFIG = {**TEXT_CONFIG, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "projection_dim": 16}
TINY_UNET_CONFIG = {**UNET_CONFIG, "block_out_channels": [16, 32, 32], "cross_attention_dim": 16,
                    "attention_head_dim": 2, "norm_num_groups": 8,
                    "addition_embed_type_num_heads": 2}


def make_vae(config: dict | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(config or VAE_CONFIG))


def make_text_encoder(tokenizer, config: dict | None = None):
    """``CLIPTextModel`` sized for ``tokenizer`` (vocabulary, special ids, sequence length)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **(config or TEXT_CONFIG))
    return CLIPTextModel(cfg)


def make_unet(config: dict | None = None):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(config or UNET_CONFIG))


TRAINED_PREDICTION_TYPES = ("epsilon", "v_prediction")  # those with a Min-SNR weighting here


def scheduler_config(prediction_type: str | None = None, zero_terminal_snr: bool = False) -> dict:
    """SD's DDIM configuration for a UNet that predicts ``prediction_type``. ``zero_terminal_snr``:
    Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"): the β
    schedule rescaled so that ᾱ_T = 0 (Alg. 1; SD's ends at ᾱ_T ≈ 0.0047, so training never sees
    pure noise while sampling starts from it) and timesteps spaced from T ("trailing", Sec. 3.3).
    It needs v-prediction (Salimans & Ho 2022): at SNR 0 the noise is the input and ε-prediction
    carries no information (Sec. 3.2). ``prediction_type`` None: v-prediction with a zero-terminal-SNR
    schedule, ε otherwise."""
    if prediction_type is None:
        prediction_type = "v_prediction" if zero_terminal_snr else "epsilon"
    if prediction_type not in TRAINED_PREDICTION_TYPES:
        raise ValueError(f"prediction type must be one of {', '.join(TRAINED_PREDICTION_TYPES)}, "
                         f"got {prediction_type!r}")
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError("a zero-terminal-SNR schedule needs v-prediction (at SNR 0 the ε target is the input)")
    cfg = {**SCHEDULER_CONFIG, "prediction_type": prediction_type}
    if zero_terminal_snr:
        cfg.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return cfg


def make_scheduler(config: dict | None = None):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**(config or SCHEDULER_CONFIG))


def alphas_cumprod(config: dict | None = None) -> torch.Tensor:
    """ᾱ_t of the training schedule (the scheduler's own, float32)."""
    return make_scheduler(config).alphas_cumprod.float()



def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Cross-attention context exactly as ``StableDiffusionPipeline.encode_prompt`` makes it:
    padded to ``model_max_length``, no attention mask, last hidden states."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def make_pipeline(vae, text_encoder, tokenizer, unet, scheduler: dict | None = None):
    """An in-memory ``StableDiffusionPipeline`` (DDIM, ``scheduler`` config) of the given components."""
    from ..core.text_model import quiet_libraries

    with quiet_libraries():  # transformers advises on image processors this pipeline leaves out
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=make_scheduler(scheduler), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_pipeline(out, vae, text_encoder, tokenizer_dir, unet, scheduler: dict | None = None) -> Path:
    """Write a diffusers ``StableDiffusionPipeline`` folder (safetensors weights)."""
    from .tokenizer import load_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from ..core.text_model import quiet_libraries

    pipe = make_pipeline(vae, text_encoder, load_tokenizer(tokenizer_dir), unet, scheduler)
    with quiet_libraries():  # transformers' "Writing model shards" bar for the text encoder
        pipe.save_pretrained(str(out), safe_serialization=True)
    # the tokenizer as written (vocab.json + merges.txt + configs), not transformers' re-serialisation
    tok_out = out / "tokenizer"
    if tok_out.exists():
        shutil.rmtree(tok_out)
    shutil.copytree(tokenizer_dir, tok_out)
    return out


def parameter_counts(folder) -> dict:
    """Parameters per component of an exported pipeline folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"vae": n(AutoencoderKL.from_pretrained(str(folder / "vae"))),
            "text_encoder": n(CLIPTextModel.from_pretrained(str(folder / "text_encoder"))),
            "unet": n(UNet2DConditionModel.from_pretrained(str(folder / "unet")))}


def read_model_index(folder) -> dict:
    return json.loads((Path(folder) / "model_index.json").read_text())
