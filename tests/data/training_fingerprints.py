"""Fingerprints of every trainer on a tiny run with the shipped recipes' options, and how they were made.

``training_fingerprints.json`` beside this file holds, for each trainer, the mean loss over steps
1-10 (what ``loss.csv`` logs at step 10) and the first 12 losses of the progress callback, at full
precision, and the L1 norm of every weights file its final checkpoint or export wrote. They were
made by the trainers before they shared one loop (commit 7bf679f), with

    git worktree add /tmp/before 7bf679f
    PYTHONPATH=/tmp/before python tests/data/training_fingerprints.py --before-shared-loop

``tests/test_training_recipes.py`` runs :func:`fingerprints` on today's trainers and compares:
equal numbers mean the same random draws in the same order and the same arithmetic, so old runs
resume exactly and the cards' commands still make the shipped models.

Each run uses the options the model cards' ``studio train`` commands give (Min-SNR-5, the cosine
schedule, EMA 0.999, ``--stroke-weight 4``, a frozen pretrained text encoder, v-prediction on a
zero-terminal-SNR schedule, the cards' seeds and learning rates), with tiny networks, a 40-64 image
training set (the captioned ones rendered, not cached: commit 7bf679f's cache key reads a file
that commit renamed), small batches, 12 steps, a 4-step warm-up (so the cosine decay is part of
the run) and checkpoints every 5 steps, one thread.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "training_fingerprints.json"
STEPS = 12

# The settings of the shipped runs' `studio train` commands (the model cards), as the API's keywords;
# tests/test_training_recipes.py checks that the cards' commands still give these.
RECIPES = {
    "diffusion": dict(seed=0, lr=1.2e-3, lr_schedule="cosine", snr_gamma=5.0, ema_decay=0.999),
    "classifier": dict(seed=1, lr=1e-3),
    "evaluator": dict(seed=2, lr=2e-3),
    "vae": dict(seed=0, lr=1e-3, stroke_weight=4.0),
    "text-encoder": dict(seed=0, lr=1e-3),
    "text-diffusion": dict(seed=0, lr=1e-3, ema_decay=0.999, snr_gamma=5.0, zero_terminal_snr=True),
}
TINY_CLF = dict(base_channels=8, channel_mult=(1, 2), time_embed_dim=32, norm_groups=4)
TINY_EVAL = dict(widths=(8, 16), feature_dim=16)


def weights_norm(path: Path) -> float:
    """The L1 norm of every floating-point tensor in a safetensors file (float64 sum)."""
    from safetensors.torch import load_file

    return float(sum(t.double().abs().sum() for t in load_file(str(path)).values() if t.is_floating_point()))


class Losses:
    """A progress callback that keeps the loss it is given at each step."""

    def __init__(self):
        self.losses: list[float] = []

    def __call__(self, step, total, loss, eta_s):
        self.losses.append(float(loss))


def _record(losses: Losses, files: dict[str, Path], per_step: bool = False) -> dict:
    """``per_step``: the callback got each step's own loss (the text encoder's pretraining before
    the shared loop); the mean of the first ten is then what the window mean is at step 10."""
    first = losses.losses[:STEPS]
    loss_at_10 = sum(first[:10]) / 10 if per_step else first[9]
    return {"loss_at_10": loss_at_10, "progress_losses": None if per_step else first,
            "weights_l1": {name: weights_norm(p) for name, p in files.items()}}


def fingerprints(root, text_encoder_per_step: bool = False) -> dict:
    """Run every trainer tiny under ``root``; returns {trainer: fingerprint}. ``text_encoder_per_step``:
    the code before the shared loop, whose text-encoder pretraining reported each step's own loss."""
    import torch

    from studio.training.classifier import train_classifier
    from studio.training.diffusion import train_diffusion
    from studio.training.evaluator import train_evaluator
    from studio.training.text_diffusion import train_text_diffusion
    from studio.training.text_model import TINY_TEXT_CONFIG, TINY_UNET_CONFIG as TINY_TEXT_UNET, TINY_VAE_CONFIG
    from studio.training.text_pretrain import pretrain_text_encoder
    from studio.training.unet_config import TINY_UNET_CONFIG
    from studio.training.vae_train import train_vae

    torch.set_num_threads(1)
    root = Path(root)
    cache = root / "cache"
    out: dict = {}

    p = Losses()
    train_diffusion(root / "diffusion", steps=STEPS, batch_size=4, checkpoint_every=5, grid_every=10, warmup_steps=4,
                    dataset_cache=cache, dataset_n=64, unet_config=TINY_UNET_CONFIG, grid_per_class=1,
                    grid_steps=2, export=False, progress=p, **RECIPES["diffusion"])
    ck = root / "diffusion" / "checkpoints" / f"step_{STEPS:06d}"
    out["diffusion"] = _record(p, {"model": ck / "model.safetensors", "ema": ck / "ema.safetensors"})

    p = Losses()
    train_classifier(root / "classifier", steps=STEPS, batch_size=8, checkpoint_every=5, warmup_steps=4,
                     dataset_cache=cache, dataset_n=64, model_config=TINY_CLF, eval_n=0, export=False, progress=p,
                     **RECIPES["classifier"])
    ck = root / "classifier" / "checkpoints" / f"step_{STEPS:06d}"
    out["classifier"] = _record(p, {"model": ck / "model.safetensors"})
    p = Losses()
    train_evaluator(root / "evaluator", steps=STEPS, batch_size=8, checkpoint_every=5, warmup_steps=4,
                    dataset_cache=cache, dataset_n=64, test_n=0, model_config=TINY_EVAL, export=False, progress=p,
                    **RECIPES["evaluator"])
    ck = root / "evaluator" / "checkpoints" / f"step_{STEPS:06d}"
    out["evaluator"] = _record(p, {"model": ck / "model.safetensors"})

    p = Losses()
    vs = train_vae(root / "vae", steps=STEPS, batch_size=4, checkpoint_every=5, warmup_steps=4, dataset_cache=None,
                   dataset_n=40, vae_config=TINY_VAE_CONFIG, progress=p, **RECIPES["vae"])
    out["vae"] = _record(p, {"vae": Path(vs["export"]) / "diffusion_pytorch_model.safetensors"})

    p = Losses()
    te = pretrain_text_encoder(root / "text-encoder", steps=STEPS, batch_size=16, warmup_steps=4,
                               text_config=TINY_TEXT_CONFIG, progress=p, **RECIPES["text-encoder"])
    out["text-encoder"] = _record(p, {"text_encoder": Path(te["export"]) / "text_encoder" / "model.safetensors"},
                                  per_step=text_encoder_per_step)

    p = Losses()  # conditioned on the pretrained text encoder, frozen (--text-encoder)
    train_text_diffusion(root / "text-diffusion", vs["export"], steps=STEPS, batch_size=4, checkpoint_every=5,
                         grid_every=10, grid_per_prompt=1, grid_steps=2, warmup_steps=4, dataset_cache=None,
                         dataset_n=40, unet_config=TINY_TEXT_UNET, text_config=TINY_TEXT_CONFIG,
                         text_encoder_init=te["export"], export=False, progress=p, **RECIPES["text-diffusion"])
    ck = root / "text-diffusion" / "checkpoints" / f"step_{STEPS:06d}"
    out["text-diffusion"] = _record(p, {"unet": ck / "unet.safetensors", "ema_unet": ck / "ema_unet.safetensors"})
    return out


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = fingerprints(tmp, text_encoder_per_step="--before-shared-loop" in argv)
    FIXTURE.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
