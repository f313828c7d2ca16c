"""Tiny Stable Diffusion and SDXL pipelines, built from configs and saved as real pipeline folders.

Nothing is downloaded: the tokenizer is a byte-level CLIP BPE vocabulary with no merges (every word
becomes its characters), written by ``write_clip_tokenizer``; the networks are random-initialised
diffusers / transformers modules, small enough that a whole sampling run takes well under a second.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
MAX_TOKENS = 16


# the settings the pipeline-agreement tests (test_text_pipelines, test_img2img) share
BATCH = 2
SIZE = 16
TOL = 1e-4
PROMPT = "a red seven on a blue background"
NEGATIVE = "green"

def byte_chars() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 byte values (their ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path, max_length: int = MAX_TOKENS) -> int:
    """A real CLIP tokenizer folder (vocab.json, merges.txt, tokenizer_config.json); returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_chars()
    vocab: dict[str, int] = {}
    for c in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[c] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length,
                                                               "tokenizer_class": "CLIPTokenizer"}))
    return len(vocab)


def text_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                          hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                          max_position_embeddings=MAX_TOKENS, vocab_size=vocab_size, projection_dim=projection_dim)


def tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[16, 32], latent_channels=latent_channels,
                         norm_num_groups=8, sample_size=16)


def make_sd_pipeline(folder: Path, seed: int = 0, scheduler: dict | None = None, cross_attention_dim: int = 32,
                     latent_channels: int = 4) -> Path:
    """A StableDiffusionPipeline folder (UNet 8×8×4 latents, VAE factor 2: 16×16 images)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder.parent / f".{folder.name}-tokenizer"
    vocab = write_clip_tokenizer(tok_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
                                attention_head_dim=8, norm_num_groups=8)
    vae = tiny_vae(latent_channels)
    text = CLIPTextModel(text_config(vocab, hidden=32))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
                                   unet=unet, scheduler=DDIMScheduler.from_config(scheduler or SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _tokenizer_files(tok_dir, folder / "tokenizer")
    return folder


def make_sdxl_pipeline(folder: Path, seed: int = 0, scheduler: dict | None = None) -> Path:
    """A StableDiffusionXLPipeline folder: two text encoders (the second with a projection), text_time
    added conditioning, 8×8×4 latents, 16×16 images."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder.parent / f".{folder.name}-tokenizer"
    vocab = write_clip_tokenizer(tok_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=8 * 6 + 32,
                                cross_attention_dim=64, norm_num_groups=8)
    vae = tiny_vae()
    te1 = CLIPTextModel(text_config(vocab, hidden=32))
    te2 = CLIPTextModelWithProjection(text_config(vocab, hidden=32, projection_dim=32))
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=EulerDiscreteScheduler.from_config(scheduler or SD_SCHEDULER),
                                     add_watermarker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _tokenizer_files(tok_dir, folder / "tokenizer")
    _tokenizer_files(tok_dir, folder / "tokenizer_2")
    return folder


def _tokenizer_files(src: Path, dst: Path) -> None:
    """Ship vocab.json + merges.txt as real SD folders do (transformers 5 saves only tokenizer.json)."""
    for name in ("vocab.json", "merges.txt"):
        (dst / name).write_bytes((src / name).read_bytes())
