"""A text-to-image latent diffusion model as the engine sees it (Rombach et al. 2022).

The reverse chain runs on the VAE's scaled latents z = scaling_factor · E(x); the UNet cross-attends
to the text encoder's hidden states. Prompts are encoded by diffusers' own ``encode_prompt`` (so the
embeddings are exactly a diffusers pipeline's) once per distinct text and kept, so branches and
compare runs with the same prompt reuse them. A prompt written in the web UIs' weighting syntax
(``(word:1.3)``; ``prompt_weights.py``) is encoded from the same hidden states with the weights
applied as AUTOMATIC1111 applies them (``prompt_emphasis.py``).

Seeing latents: ``preview`` maps latents to RGB with a per-model linear projection (least squares
against what the VAE decodes; ``fit_linear_preview``), cheap enough for every step; ``decode`` is
the full VAE decode, for the step being looked at and for final images.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, replace as replace_field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .conditioning import TextCondition
from .file_hashes import user_cache_dir  # the one cache folder ($STUDIO_CACHE_DIR, else the platform's)
from .model import ModelInfo
from .prompt_emphasis import ChunkTokens, chunk_tokens, emphasise
from .prompt_weights import checked_runs, is_plain, parse_weights
from .weight_health import NonFiniteGuard


PREVIEW_MODES = ("linear", "tiny", "full")
REFINER_PIPELINE = "StableDiffusionXLImg2ImgPipeline"
XL_PIPELINES = ("StableDiffusionXLPipeline", REFINER_PIPELINE)
# UNets up to this size run channels-last on the CPU: the digits-text UNet (3.4 M) steps faster so, SD 1.5's
# (860 M) does not, and copying its weights into the layout takes longer than it could win back
CHANNELS_LAST_MAX_PARAMETERS = 100_000_000
REFINER_AESTHETIC_SCORES = (6.0, 2.5)  # StableDiffusionXLImg2ImgPipeline's aesthetic_score, negative_aesthetic_score


@contextlib.contextmanager
def quiet_libraries():
    """Silence diffusers' and transformers' advice meant for their own loaders (dtype casts, image
    processors never used, the tokenizer's length warning the studio reports itself) and their
    loading progress bars (the studio reports its own progress)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (dlog, tlog)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bars in saved:
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt's conditioning for one sample, and what the tokenizer cut from it."""

    condition: TextCondition
    truncated: str = ""  # the text past the tokenizer's limit, "" when nothing was cut


def fit_linear_preview(decode: Callable[[torch.Tensor], torch.Tensor], channels: int, factor: int,
                       n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Least-squares latent→RGB map: (channels + 1) × 3, the last row a bias.

    Latents are drawn smooth (low-resolution noise upsampled, plus fine noise) in the scaled space
    the chain works in, decoded by ``decode`` (→ images in [−1, 1], ``factor`` × larger), and the
    images average-pooled back to the latent grid; each latent pixel's RGB is then regressed on its
    channels. The projection is what SD web UIs call "approximate" previews, fitted rather than
    hand-written, so it holds for any VAE."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, max(1, size // 4), max(1, size // 4), generator=g)
    z = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) * 1.5
    z = z + 0.5 * torch.randn(n, channels, size, size, generator=g)
    with torch.no_grad():
        img = decode(z).float()
    pooled = F.avg_pool2d(img, factor)
    zs = z.permute(0, 2, 3, 1).reshape(-1, channels)
    a = torch.cat([zs, torch.ones(zs.shape[0], 1)], dim=1).double()
    y = pooled.permute(0, 2, 3, 1).reshape(-1, 3).double()
    return torch.linalg.lstsq(a, y).solution.float()


def apply_linear_preview(weights: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents → (B, 3, h, w) RGB in about [−1, 1] through a fitted projection."""
    w = weights.to(z.device, torch.float32)
    return torch.einsum("bchw,cd->bdhw", z.float(), w[:-1]) + w[-1].view(1, 3, 1, 1)


class TextToImageModel:
    """UNet2DConditionModel + AutoencoderKL + CLIP text encoder(s), behind the engine's model protocol.

    ``predict(x, t, cond, σ)`` takes a ``TextCondition`` where pixel models take labels. On CPU a small
    UNet (the built-in digits-text) runs channels-last, as the pixel models do; a Stable-Diffusion-size
    one keeps the default layout, in which it steps as fast and which spares the copy of its weights
    (``benchmarks/bench_memory_format.py``)."""

    classifier = None

    def __init__(self, unet, vae, text_encoders: list, tokenizers: list, info: ModelInfo,
                 device=torch.device("cpu"), dtype=torch.float32, force_zeros_for_empty_prompt: bool = True):
        self.device, self.dtype = device, dtype
        self.channels_last = device.type == "cpu" and \
            sum(p.numel() for p in unet.parameters()) <= CHANNELS_LAST_MAX_PARAMETERS
        with quiet_libraries():
            unet = unet.to(device=device, dtype=dtype)
            if self.channels_last:
                unet = unet.to(memory_format=torch.channels_last)
            self.unet = unet
            self.vae = vae.to(device=device, dtype=torch.float32)  # decoding in float32: fp16 VAEs overflow
            self.text_encoders = [e.to(device=device, dtype=dtype) for e in text_encoders]
        self.tokenizers = tokenizers
        self.info = info
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self._prompts: dict[tuple, EncodedPrompt] = {}
        self._pipe = None
        self._preview: Optional[torch.Tensor] = None
        self.xl = info.pipeline in XL_PIPELINES
        self.refiner = info.pipeline == REFINER_PIPELINE  # SDXL's refiner: the second encoder, aesthetic scores
        # the weights are scanned for NaN only when an output is not finite (weight_health.py)
        self.weights_guard = NonFiniteGuard(info.source or info.name, self.weight_modules)

    def weight_modules(self):
        """(component, module) of every network, in the order a damaged weight is looked for."""
        yield "unet", self.unet
        for i, encoder in enumerate(self.text_encoders):
            yield ("text_encoder", "text_encoder_2")[min(i, 1)], encoder
        yield "vae", self.vae

    # -- the network ---------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: TextCondition, sigma: float) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.weights_guard.check(self.unet(x, t, **cond.unet_kwargs(self.dtype)).sample)

    # -- prompts -------------------------------------------------------------
    def _pipeline(self):
        """A diffusers pipeline over the loaded components (no weights copied), for ``encode_prompt``."""
        if self._pipe is None:
            with quiet_libraries():
                from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

                sched = DDIMScheduler.from_config(self.info.scheduler_config)
                if self.refiner:
                    from diffusers import StableDiffusionXLImg2ImgPipeline

                    self._pipe = StableDiffusionXLImg2ImgPipeline(
                        vae=self.vae, text_encoder=None, text_encoder_2=self.text_encoders[0], tokenizer=None,
                        tokenizer_2=self.tokenizers[0], unet=self.unet, scheduler=sched,
                        requires_aesthetics_score=True,
                        force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt, add_watermarker=False)
                elif self.xl:
                    self._pipe = StableDiffusionXLPipeline(
                        vae=self.vae, text_encoder=self.text_encoders[0], text_encoder_2=self.text_encoders[1],
                        tokenizer=self.tokenizers[0], tokenizer_2=self.tokenizers[1], unet=self.unet, scheduler=sched,
                        force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt, add_watermarker=False)
                else:
                    self._pipe = StableDiffusionPipeline(
                        vae=self.vae, text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0], unet=self.unet,
                        scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return self._pipe

    def pipeline(self):
        """The diffusers pipeline over this model's components (shared, not copied): what LoRAs are
        loaded and weighted through (``studio.checkpoints.lora``)."""
        return self._pipeline()

    def forget_prompts(self) -> None:
        """Drop the kept prompt encodings: the text encoders changed (a LoRA loaded or re-weighted)."""
        self._prompts.clear()

    def truncated_text(self, prompt: str) -> str:
        """What the tokenizer's limit cuts from ``prompt`` (diffusers truncates silently but for a log line),
        weights read as :meth:`encode` reads them."""
        tok = self.tokenizers[0]
        with quiet_libraries():
            cut = chunk_tokens(parse_weights(prompt), tok).cut
        return tok.decode(cut).strip() if cut else ""

    def prompt_tokens(self, prompt: str, encoder: int = 0) -> ChunkTokens:
        """The token ids one text encoder sees for ``prompt`` (start, tokens, end, padding) and each one's
        weight, as :meth:`encode` reads the weights."""
        with quiet_libraries():
            return chunk_tokens(parse_weights(prompt), self.tokenizers[encoder])

    def encode(self, prompt: Optional[str], height: int, width: int) -> EncodedPrompt:
        """The conditioning of one sample for ``prompt`` (None: SDXL's zeroed unconditional branch)."""
        key = (prompt, height, width)
        hit = self._prompts.get(key)
        if hit is not None:
            return hit
        pipe = self._pipeline()
        text = "" if prompt is None else prompt
        runs = checked_runs(text)
        with quiet_libraries(), torch.no_grad():
            if is_plain(text):  # diffusers' own encoding, as for every prompt without weights
                if self.xl:
                    embeds, _, pooled, _ = pipe.encode_prompt(prompt=text, device=self.device, num_images_per_prompt=1,
                                                              do_classifier_free_guidance=False)
                else:
                    embeds, _ = pipe.encode_prompt(text, self.device, 1, False)
                    pooled = None
            else:
                embeds, pooled = self._weighted_embeddings(runs)
            if self.xl:
                if prompt is None and self.force_zeros_for_empty_prompt:
                    embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
                cond = TextCondition(embeds, pooled, self._time_ids(height, width, embeds.dtype))
            else:
                cond = TextCondition(embeds)
        out = EncodedPrompt(cond, self.truncated_text(prompt) if prompt else "")
        self._prompts[key] = out
        return out

    def _time_ids(self, height: int, width: int, dtype: torch.dtype, negative: bool = False) -> torch.Tensor:
        """SDXL's micro-conditioning (Podell et al. 2023, Sec. 2.2) for an image of this size, uncropped, as
        diffusers' pipelines build it: (original size, crop, target size) for the base model; (original size,
        crop, aesthetic score) for the refiner, whose conditioner takes an aesthetic score in place of the
        target size: 6.0 for the prompt and 2.5 for the unconditional branch (``StableDiffusionXLImg2ImgPipeline``'s
        defaults)."""
        pipe = self._pipeline()
        projection = int(self.text_encoders[-1].config.projection_dim)
        size = (height, width)
        if self.refiner:
            pos, neg = pipe._get_add_time_ids(size, (0, 0), size, REFINER_AESTHETIC_SCORES[0],
                                              REFINER_AESTHETIC_SCORES[1], size, (0, 0), size, dtype=dtype,
                                              text_encoder_projection_dim=projection)
            return (neg if negative else pos).to(self.device)
        return pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype,
                                      text_encoder_projection_dim=projection).to(self.device)

    def _weighted_embeddings(self, runs: list[tuple[str, float]]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(embeds, pooled) of a weighted prompt by the web UIs' rule (``prompt_emphasis``), from the hidden
        states diffusers' ``encode_prompt`` takes: the last (SD 1.x/2.x) or the penultimate of each encoder,
        joined along the features (SDXL). Each encoder's states are weighted and rescaled on their own, as
        A1111 does for each of SDXL's; SDXL's pooled embedding is the second encoder's on the same tokens,
        unweighted, as A1111 takes it (its first chunk's, before emphasis)."""
        pipe = self._pipeline()
        zs, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            chunk = chunk_tokens(runs, tok, lambda t, tok=tok: pipe.maybe_convert_prompt(t, tok))
            ids = torch.tensor([chunk.ids], device=self.device)
            mask = torch.ones_like(ids) if getattr(enc.config, "use_attention_mask", False) else None
            out = enc(ids, attention_mask=mask, output_hidden_states=self.xl)
            if self.xl and out[0].ndim == 2:
                pooled = out[0]
            z = (out.hidden_states[-2] if self.xl else out[0]).to(enc.dtype)
            zs.append(emphasise(z, chunk.weights))
        return torch.cat(zs, dim=-1), pooled

    def conditions(self, prompt: str, negative_prompt: Optional[str], batch: int, height: int,
                   width: int) -> tuple[TextCondition, TextCondition, list[str]]:
        """(conditional, unconditional, notes) for a batch: the prompt, and the negative prompt as
        the unconditional branch (the empty prompt when there is none; SDXL zeroes it as diffusers
        does). ``notes`` says what the tokenizer cut. Weights that cannot be read raise ``PromptWeightError``
        (one line naming the prompt)."""
        for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
            checked_runs(text or "", label)
        pos = self.encode(prompt or "", height, width)
        neg_text = negative_prompt if negative_prompt is not None else (None if self.xl else "")
        neg = self.encode(neg_text, height, width)
        if self.refiner:  # the same text, the unconditional branch's aesthetic score
            neg = EncodedPrompt(replace_field(neg.condition, time_ids=self._time_ids(
                height, width, neg.condition.embeds.dtype, negative=True)), neg.truncated)
        notes = []
        for label, enc in (("prompt", pos), ("negative prompt", neg)):
            if enc.truncated:
                notes.append(f"the {label} is longer than {self.info.max_prompt_tokens} tokens; "
                             f"this was cut: {enc.truncated!r}")

        def expand(c: TextCondition) -> TextCondition:
            def rep(v):
                return None if v is None else v.expand(batch, *v.shape[1:]).contiguous()

            return TextCondition(rep(c.embeds), rep(c.pooled), rep(c.time_ids))

        return expand(pos.condition), expand(neg.condition), notes

    # -- seeing latents ------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """Full VAE decode of scaled latents → images (B, 3, H, W) in [−1, 1], float32, on the CPU."""
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        outs = []
        for chunk in z.split(batch_size):
            zz = chunk.to(self.device, torch.float32) / float(cfg.scaling_factor) + shift
            outs.append(self.weights_guard.check(self.vae.decode(zz).sample).float().clamp(-1, 1).cpu())
        return torch.cat(outs)

    def replace_vae(self, vae, source: Optional[str]) -> None:
        """Decode with ``vae`` from now on; ``source``: the file or folder it came from (None: the model's
        own VAE). The latent→RGB preview is refitted (or read from the cache) for it."""
        with quiet_libraries():
            self.vae = vae.to(device=self.device, dtype=torch.float32)
        self.vae_source = source
        self._pipe, self._preview = None, None
        self.weights_guard.forget()

    vae_source: Optional[str] = None  # a VAE given apart from the model (--vae), or None

    def _preview_cache_path(self) -> Path:
        h = hashlib.sha256(json.dumps(dict(self.vae.config), sort_keys=True, default=str).encode())
        src = Path(self.vae_source or self.info.source)
        vae = src / "vae" if self.vae_source is None else src
        if src.is_file():  # a single-file checkpoint holds its VAE; a --vae file is one
            files = [src]
        else:
            files = sorted(vae.glob("*.safetensors")) if vae.is_dir() else []
        for f in files:
            st = f.stat()
            h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return user_cache_dir() / "previews" / f"{h.hexdigest()[:24]}.json"

    def preview_weights(self) -> torch.Tensor:
        """The fitted latent→RGB projection, from the user's cache or fitted now (and cached)."""
        if self._preview is not None:
            return self._preview
        path = self._preview_cache_path()
        try:
            w = torch.tensor(json.loads(path.read_text())["weights"], dtype=torch.float32)
            if tuple(w.shape) != (self.info.in_channels + 1, 3):
                raise ValueError
        except (OSError, ValueError, KeyError, TypeError):
            w = fit_linear_preview(lambda z: self.decode(z, batch_size=8), self.info.in_channels,
                                   self.info.vae_scale_factor)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"weights": w.tolist()}))
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only home only costs a refit next time
        self._preview = w
        return w

    def set_preview(self, mode: str = "linear", tiny_vae: Optional[str] = None) -> None:
        """How ``preview`` renders latents: ``linear`` (the fitted projection, at latent resolution),
        ``tiny`` (an AutoencoderTiny folder, e.g. TAESD: a distilled decoder at full resolution) or
        ``full`` (the model's own VAE every time)."""
        if mode not in PREVIEW_MODES:
            raise ValueError(f"unknown preview {mode!r}; choose one of {', '.join(PREVIEW_MODES)}")
        if tiny_vae and mode == "linear":
            mode = "tiny"
        if mode == "tiny":
            if not tiny_vae:
                raise ValueError("--preview tiny needs an AutoencoderTiny folder; pass --preview-vae PATH")
            from .pipeline import load_tiny_autoencoder

            tiny = load_tiny_autoencoder(tiny_vae, self.device)
            if int(tiny.config.latent_channels) != self.info.in_channels:
                from .loading import ModelLoadError

                raise ModelLoadError(f"{tiny_vae}: an AutoencoderTiny with {tiny.config.latent_channels} latent "
                                     f"channels cannot preview {self.info.name!r} ({self.info.in_channels} channels)")
            self._tiny = tiny
        self.preview_mode = mode

    preview_mode = "linear"
    _tiny = None

    @torch.no_grad()
    def preview(self, z: torch.Tensor) -> torch.Tensor:
        """Latents → RGB in [−1, 1], as ``set_preview`` chose (default: linear, at latent resolution)."""
        if self.preview_mode == "full":
            return self.decode(z)
        if self.preview_mode == "tiny":
            sf = float(self._tiny.config.scaling_factor)
            return self._tiny.decode(z.to(self.device, torch.float32) / sf).sample.float().clamp(-1, 1).cpu()
        return apply_linear_preview(self.preview_weights(), z).clamp(-1, 1)
