"""Which Stable Diffusion family a single-file checkpoint is, from its tensor names and shapes alone.

Single files keep the original training code's layout: CompVis latent-diffusion
(``ldm.models.diffusion.ddpm.LatentDiffusion``) for SD 1.x and 2.x, Stability's generative-models
(``sgm.models.diffusion.DiffusionEngine``) for SDXL:

* UNet ``model.diffusion_model.*`` (``openaimodel.UNetModel``): ``input_blocks.0.0.weight`` is the input
  convolution ``[320, C, 3, 3]`` — C = 4 latent channels; 9 for inpainting (latents, mask, masked
  image), 8 for InstructPix2Pix, 7 for the x4 upscaler, 5 for depth-to-image. Every cross-attention
  ``*.attn2.to_k.weight`` is ``[channels, context_dim]``; ``label_emb.0.0.weight`` ``[time_dim,
  adm_in_channels]`` exists when the UNet is also conditioned on pooled text and image sizes (SDXL).
* VAE ``first_stage_model.*``; EMA copy of the UNet ``model_ema.*`` (names with the dots removed).
* Text encoders: SD 1.x ``cond_stage_model.transformer.*`` (OpenAI CLIP ViT-L/14 in transformers'
  layout, width 768); SD 2.x ``cond_stage_model.model.*`` (OpenCLIP ViT-H/14, width 1024); SDXL base
  ``conditioner.embedders.0.transformer.*`` (CLIP ViT-L/14) and ``conditioner.embedders.1.model.*``
  (OpenCLIP ViT-bigG/14, width 1280); the SDXL refiner only ``conditioner.embedders.0.model.*`` (bigG).

The families differ in (context_dim, adm_in_channels): SD 1.x (768, none), SD 2.x (1024, none), SDXL
base (2048 = 768 + 1280, 2816 = 1280 pooled + 6 × 256 size/crop embeddings), SDXL refiner (1280,
2560 = 1280 + 5 × 256). diffusers' own detection (``single_file_utils.infer_diffusers_model_type``,
which looks for one key per family and falls back to "v1" for anything it does not know) is asked
too: its answer names the families the studio does not run (SD3, Flux, ControlNet, …) and is
reported beside ours.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch

from .header import CheckpointError, CheckpointHeader, TensorInfo

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
LABEL_EMB = UNET_PREFIX + "label_emb.0.0.weight"
CONTEXT_KEY_SUFFIX = ".attn2.to_k.weight"
CONTROLNET_PREFIX = "control_model."


class UnsupportedCheckpoint(CheckpointError):
    """A readable file that is not a checkpoint the studio runs; ``kind`` says what it is instead."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TextEncoder:
    """A text encoder as a single file stores it; ``component`` is its diffusers pipeline name."""
    component: str
    title: str
    prefix: str
    width_key: str  # under ``prefix``: the token embedding, [vocabulary, width]
    width: int

    @property
    def key(self) -> str:
        return self.prefix + self.width_key


CLIP_L = "CLIP ViT-L/14"
CLIP_L_TOKENS = "text_model.embeddings.token_embedding.weight"
OPEN_CLIP_TOKENS = "token_embedding.weight"
SD1_CLIP_L = TextEncoder("text_encoder", CLIP_L, "cond_stage_model.transformer.", CLIP_L_TOKENS, 768)
SD2_OPEN_CLIP_H = TextEncoder("text_encoder", "OpenCLIP ViT-H/14", "cond_stage_model.model.", OPEN_CLIP_TOKENS, 1024)
SDXL_CLIP_L = TextEncoder("text_encoder", CLIP_L, "conditioner.embedders.0.transformer.", CLIP_L_TOKENS, 768)
SDXL_OPEN_CLIP_G = TextEncoder("text_encoder_2", "OpenCLIP ViT-bigG/14", "conditioner.embedders.1.model.",
                               OPEN_CLIP_TOKENS, 1280)
REFINER_OPEN_CLIP_G = TextEncoder("text_encoder_2", "OpenCLIP ViT-bigG/14", "conditioner.embedders.0.model.",
                                  OPEN_CLIP_TOKENS, 1280)


@dataclass(frozen=True)
class Family:
    """A checkpoint family the studio runs.

    ``diffusers_type``: the name ``infer_diffusers_model_type`` gives it (the key of diffusers'
    config tables). ``default_prediction``: what diffusers' single-file loader assumes when nothing
    says otherwise. ``size``: the native image size in pixels (diffusers'
    ``DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP``); ``epsilon_size`` where the ε-prediction release of
    the family is smaller (SD 2.x: 512-base is ε, 768-v is v)."""
    name: str
    title: str
    diffusers_type: str
    context_dim: int
    adm_in_channels: Optional[int]
    text_encoders: tuple[TextEncoder, ...]
    default_prediction: str
    pipeline: str
    size: int
    epsilon_size: Optional[int] = None

    def native_size(self, prediction_type: str) -> int:
        return self.epsilon_size if self.epsilon_size and prediction_type == "epsilon" else self.size


SD1 = Family("sd1", "Stable Diffusion 1.x", "v1", 768, None, (SD1_CLIP_L,), "epsilon",
             "StableDiffusionPipeline", 512)
SD2 = Family("sd2", "Stable Diffusion 2.x", "v2", 1024, None, (SD2_OPEN_CLIP_H,), "v_prediction",
             "StableDiffusionPipeline", 768, epsilon_size=512)
SDXL = Family("sdxl", "Stable Diffusion XL base", "xl_base", 2048, 2816, (SDXL_CLIP_L, SDXL_OPEN_CLIP_G), "epsilon",
              "StableDiffusionXLPipeline", 1024)
SDXL_REFINER = Family("sdxl-refiner", "Stable Diffusion XL refiner", "xl_refiner", 1280, 2560, (REFINER_OPEN_CLIP_G,),
                      "epsilon", "StableDiffusionXLImg2ImgPipeline", 1024)
FAMILIES = (SD1, SD2, SDXL, SDXL_REFINER)
SUPPORTED = "SD 1.x, SD 2.x and SDXL base/refiner"

# UNet input channels other than 4 -> what the checkpoint is
IN_CHANNEL_KINDS = {9: ("inpainting", ("an inpainting checkpoint (its UNet takes 9 input channels: latents, mask, "
                                       "masked image)")),
                    8: ("instruct-pix2pix", "an InstructPix2Pix checkpoint (8 UNet input channels)"),
                    7: ("upscaler", "the x4 upscaler (7 UNet input channels)"),
                    5: ("depth", "a depth-to-image checkpoint (5 UNet input channels)")}
# diffusers' model types (infer_diffusers_model_type) the studio does not run -> what to call them
DIFFUSERS_NAMES = {"sd3": "a Stable Diffusion 3", "sd35": "a Stable Diffusion 3.5", "flux": "a FLUX", "chroma": "a Chroma",
                   "controlnet": "a ControlNet", "stable_cascade": "a Stable Cascade",
                   "animatediff": "an AnimateDiff motion module", "playground": "a Playground v2.5",
                   "upscale": "an x4 upscaler", "inpainting": "an inpainting", "xl_inpaint": "an SDXL inpainting",
                   "instruct-pix2pix": "an InstructPix2Pix", "ltx": "an LTX-Video", "wan": "a Wan",
                   "hunyuan": "a HunyuanVideo", "mochi": "a Mochi", "auraflow": "an AuraFlow", "lumina": "a Lumina",
                   "sana": "a Sana", "hidream": "a HiDream", "cosmos": "a Cosmos", "autoencoder-dc": "a DC-AE autoencoder",
                   "z-image": "a Z-Image", "qwen-image": "a Qwen-Image"}
LORA_MARKERS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", "_lora.down.",
                ".lora_linear_layer.")
LYCORIS_MARKERS = (".hada_w1_a", ".lokr_w1", ".oft_blocks", ".oft_diag")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
EMBEDDING_KEYS = ({"emb_params"}, {"clip_l", "clip_g"})


@dataclass(frozen=True)
class Evidence:
    """A key that decided the detection, its shape (None: the key is absent) and what it shows."""
    key: str
    shape: Optional[tuple[int, ...]]
    meaning: str

    def __str__(self) -> str:
        shape = list(self.shape) if self.shape is not None else "absent"
        return f"{self.key} {shape}: {self.meaning}"


@dataclass(frozen=True)
class Detection:
    """The detected family, the keys that decided it, the family's components the file lacks, and
    what diffusers' own detection says (None when it could not tell)."""
    family: Family
    evidence: tuple[Evidence, ...]
    missing: tuple[str, ...] = ()
    diffusers_type: Optional[str] = None


class _Shaped:
    """What diffusers' detection reads of a tensor: its shape."""
    __slots__ = ("ndim", "shape")

    def __init__(self, shape: tuple[int, ...]):
        self.shape = torch.Size(shape)
        self.ndim = len(shape)


def diffusers_model_type(tensors: Mapping[str, TensorInfo]) -> Optional[str]:
    """``infer_diffusers_model_type`` on the header's shapes; None when it fails on this file."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    try:
        return infer_diffusers_model_type({k: _Shaped(v.shape) for k, v in tensors.items()})
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError, NameError):
        return None


def _refuse(header: CheckpointHeader, kind: str, what: str, advice: str = "") -> UnsupportedCheckpoint:
    tail = f"; {advice}" if advice else f"; the studio runs {SUPPORTED} checkpoints"
    return UnsupportedCheckpoint(f"{header.path}: {what}{tail}", kind)


def _diffusers_name(model_type: str) -> str:
    return next((name for stem, name in DIFFUSERS_NAMES.items() if model_type.startswith(stem)), "an unsupported")


def _top_prefixes(keys, n: int = 3) -> str:
    heads: dict[str, int] = {}
    for k in keys:
        head = k.split(".")[0] + ("." if "." in k else "")
        heads[head] = heads.get(head, 0) + 1
    top = sorted(heads, key=lambda h: -heads[h])[:n]
    return ", ".join(repr(h[:40]) for h in top)


def _without_unet(header: CheckpointHeader, guess: Optional[str]) -> UnsupportedCheckpoint:
    """What a file without an original-layout UNet is, as far as its keys tell."""
    keys = header.tensors
    if any(k.startswith(KOHYA_PREFIXES) for k in keys):
        if any(m in k for k in keys for m in LYCORIS_MARKERS):
            return _refuse(header, "lycoris", "a LyCORIS network (LoHa/LoKr), not a model",
                           "give it with --lora on top of a base model")
        return _refuse(header, "lora", "a LoRA (kohya / web UI layout), not a model",
                       "give it with --lora on top of a base model")
    if any(m in k for k in keys for m in LORA_MARKERS):
        return _refuse(header, "lora", "a LoRA (diffusers / PEFT layout), not a model",
                       "give it with --lora on top of a base model")
    names = set(keys)
    if any(names <= e for e in EMBEDDING_KEYS) or any(k.startswith("string_to_param.") for k in keys):
        return _refuse(header, "embedding", "a textual-inversion embedding, not a model")
    if any(k.startswith(CONTROLNET_PREFIX) for k in keys):
        return _refuse(header, "controlnet", "a ControlNet, not a base model")
    beside_vae = any(k.startswith(("cond_stage_model.", "conditioner.", "model.", "down_blocks.")) for k in keys)
    for prefix in ("", VAE_PREFIX, "vae."):
        if not beside_vae and {prefix + "encoder.conv_in.weight", prefix + "decoder.conv_out.weight"} <= names:
            return _refuse(header, "vae", "a standalone VAE, not a model",
                           "give it with --vae to replace a checkpoint's VAE")
    if any(k.startswith("image_proj.") for k in keys) and any(k.startswith("ip_adapter.") for k in keys):
        return _refuse(header, "ip-adapter", "an IP-Adapter, not a model")
    if guess is not None and guess != "v1":
        return _refuse(header, "other-family", f"{_diffusers_name(guess)} checkpoint (diffusers detects it as "
                                               f"{guess!r})")
    if "conv_in.weight" in names and "time_embedding.linear_1.weight" in names:
        return _refuse(header, "diffusers-unet", "a diffusers-format UNet weight file, not a single-file checkpoint",
                       "open the diffusers folder that holds it instead")
    if any(k.startswith(("text_model.", "cond_stage_model.", "conditioner.embedders.")) for k in keys):
        return _refuse(header, "text-encoder", "only a text encoder, no UNet (model.diffusion_model.*)")
    return _refuse(header, "unknown", f"not a Stable Diffusion checkpoint: no UNet (model.diffusion_model.*) and no "
                                      f"layout the studio knows (its keys start with {_top_prefixes(keys)})")


def _family_for(context: int, adm: Optional[int]) -> Optional[Family]:
    return next((f for f in FAMILIES if f.context_dim == context and f.adm_in_channels == adm), None)


def _context(header: CheckpointHeader) -> tuple[Optional[Evidence], set[int]]:
    """The first cross-attention key weight as evidence, and the context widths of all of them;
    ``UnsupportedCheckpoint`` if one of them is not a [channels, context] matrix."""
    keys = sorted(k for k in header.tensors if k.startswith(UNET_PREFIX) and k.endswith(CONTEXT_KEY_SUFFIX))
    if not keys:
        return None, set()
    odd = next((k for k in keys if len(header.tensors[k].shape) != 2), None)
    if odd is not None:
        raise _refuse(header, "inconsistent", f"{odd} has shape {list(header.tensors[odd].shape)}, not a matrix "
                                              "[channels, context dim]", "the file is damaged or of an unknown layout")
    width = header.tensors[keys[0]].shape[-1]
    return (Evidence(keys[0], header.tensors[keys[0]].shape,
                     f"cross-attention reads {width}-wide text features (context dim {width})"),
            {header.tensors[k].shape[-1] for k in keys})


def detect_family(header: CheckpointHeader) -> Detection:
    """The family of the checkpoint whose header is ``header``, with the keys that decided it.

    Raises ``UnsupportedCheckpoint`` (one line: the file, what it is, what to do) for anything the
    studio does not run: inpainting and other non-4-channel UNets, EDM models, ControlNets, LoRAs,
    VAEs, embeddings, other families (SD3, Flux, … as diffusers names them) and unknown layouts."""
    tensors = header.tensors
    if not tensors:
        raise _refuse(header, "empty", "holds no tensors")
    guess = diffusers_model_type(tensors)
    conv_in = tensors.get(CONV_IN)
    if conv_in is None:
        raise _without_unet(header, guess)
    if any(k.startswith(CONTROLNET_PREFIX) for k in tensors):
        raise _refuse(header, "controlnet", "a ControlNet bundled with its base model (control_model.*)")
    if len(conv_in.shape) != 4:
        raise _refuse(header, "inconsistent", f"{CONV_IN} has shape {list(conv_in.shape)}, not a convolution "
                                              "[out, in, 3, 3]", "the file is damaged or of an unknown layout")
    channels = conv_in.shape[1]
    if channels != 4:
        kind, what = IN_CHANNEL_KINDS.get(channels, ("unknown", f"a UNet with {channels} input channels"))
        raise _refuse(header, kind, f"{what}, detected from {CONV_IN} {list(conv_in.shape)}")
    evidence = [Evidence(CONV_IN, conv_in.shape, "UNet input convolution: 4 latent channels (not inpainting)")]
    if "edm_mean" in tensors:
        raise _refuse(header, "edm", "a Playground v2.5 checkpoint (an EDM-formulated SDXL, marked by its edm_mean key)")
    if any(k.startswith("edm_vpred.") for k in tensors):
        raise _refuse(header, "edm", "an EDM v-prediction model (such as CosXL, marked by its edm_vpred.* keys)")
    context, widths = _context(header)
    if context is None:
        raise _refuse(header, "unknown", "a UNet without cross-attention (no *.attn2.to_k.weight); not a "
                                         "text-to-image Stable Diffusion checkpoint")
    if len(widths) != 1:
        raise _refuse(header, "inconsistent", f"its cross-attention layers read text features of different widths "
                                              f"({sorted(widths)})", "the file mixes models")
    evidence.append(context)
    label = tensors.get(LABEL_EMB)
    if label is not None and len(label.shape) != 2:
        raise _refuse(header, "inconsistent", f"{LABEL_EMB} has shape {list(label.shape)}, not a matrix "
                                              "[time dim, adm_in_channels]", "the file is damaged or of an unknown layout")
    adm = label.shape[-1] if label is not None else None
    evidence.append(Evidence(LABEL_EMB, label.shape, f"pooled-text and size conditioning of {adm} inputs "
                                                     f"(adm_in_channels {adm})") if label is not None else
                    Evidence(LABEL_EMB, None, "no pooled-text or size conditioning"))
    ctx = next(iter(widths))
    family = _family_for(ctx, adm)
    if family is None:
        if ctx == SD2.context_dim and adm is not None:
            raise _refuse(header, "unclip", f"a Stable unCLIP (image variation) checkpoint: context dim {ctx} "
                                            f"with image-embedding input {adm}")
        raise _refuse(header, "unknown", f"a UNet with context dim {ctx} and "
                                         f"{'adm_in_channels ' + str(adm) if adm else 'no label_emb'}, which matches "
                                         "no known family")
    missing = []
    for te in family.text_encoders:
        info = tensors.get(te.key)
        if info is None:
            missing.append(te.component)
            evidence.append(Evidence(te.key, None, f"no {te.title} text encoder in the file"))
        elif len(info.shape) != 2 or info.shape[1] != te.width:
            raise _refuse(header, "inconsistent", f"its UNet is {family.title} but {te.key} has shape "
                                                  f"{list(info.shape)}, not [vocabulary, {te.width}]",
                          "the file mixes models")
        else:
            evidence.append(Evidence(te.key, info.shape, f"{te.title} text encoder, width {te.width}"))
    own = {te.prefix for te in family.text_encoders}
    for other in FAMILIES:
        for te in other.text_encoders:
            if te.prefix not in own and any(k.startswith(te.prefix) for k in tensors):
                raise _refuse(header, "inconsistent", f"its UNet is {family.title} (context dim {ctx}) but it holds "
                                                      f"the text encoder of {other.title} ({te.prefix}*)",
                              "the file mixes models")
    if not any(k.startswith(VAE_PREFIX) for k in tensors):
        missing.append("vae")
    return Detection(family, tuple(evidence), tuple(missing), guess)
