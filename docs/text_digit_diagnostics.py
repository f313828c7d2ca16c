"""Does a digits-text training run use the digit word? The measurements behind the model card's
section "How the digit was made to work".

    python docs/text_digit_diagnostics.py swap RUN/checkpoints/step_001000 [--raw]
    python docs/text_digit_diagnostics.py encoder RUN/checkpoints/step_001000 [--raw]
    python docs/text_digit_diagnostics.py bound RUN
    python docs/text_digit_diagnostics.py readback VAE_FOLDER
    python docs/text_digit_diagnostics.py uncond PIPELINE_FOLDER|RUN/checkpoints/step_003000

* ``swap``: ε-MSE of the checkpoint's UNet on 256 training latents noised at t = 200…800, with
  the true caption ``a {fg} {d} on a {bg} background``, the same caption with another digit, and
  the empty prompt (same noise for all three, so the differences are paired). A UNet that uses
  the digit has "wrong digit" above "true".
* ``encoder``: how far apart the text encoder's hidden states are (relative L2) for
  ``a red N on a blue background``, N = 0…9 against N = 7, and for ``green`` against ``red``.
* ``bound``: under a Gaussian model of the latents within each colour pair (and within each
  colour pair and digit), the least possible ε-MSE per dimension at t:
  (ᾱ/(1−ᾱ)) · mean eigenvalue of (Σ⁻¹ + ᾱ/(1−ᾱ) I)⁻¹; the difference is what knowing the digit
  is worth.
* ``readback``: for each digit, how often the clean reader reads it from 3,000 fresh rendered
  images (seed 4343, the training distribution) and from an autoencoder's reconstructions of
  them (posterior mean), and what the misread reconstructions were read as: the ceiling the
  autoencoder puts on each digit of any sample of its latent space.
* ``uncond``: 500 empty-prompt samples (DDIM 50 steps, w = 1, the seeds of ``studio eval``) with
  η = 0 and with η = 1, and 500 rendered images for reference: which digit the clean reader reads,
  and how sure it is (the share read with softmax probability ≥ 0.9). A sample the reader is
  unsure of is an ambiguous shape, counted as whichever digit it resembles most.

``--raw``: the trained weights instead of their EMA. Reads the run's cached training set
(``--cache-dir``, default training-runs/cache-v2) and ``latents.safetensors``.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.data.captions import COLOUR_NAMES  # noqa: E402
from studio.training.text_model import alphas_cumprod, make_text_encoder, make_unet  # noqa: E402
from studio.training.tokenizer import load_tokenizer  # noqa: E402

TS = (200, 400, 600, 800)


def load_checkpoint(ck: Path, raw: bool):
    st = json.loads((ck / "state.json").read_text())
    tok = load_tokenizer(ck.parents[1] / "tokenizer")
    unet, te = make_unet(st["unet_config"]), make_text_encoder(tok, st["text_config"])
    pre = "" if raw else "ema_"
    unet.load_state_dict(load_file(str(ck / f"{pre}unet.safetensors")))
    te.load_state_dict(load_file(str(ck / f"{pre}text_encoder.safetensors")))
    return st, tok, unet.eval(), te.eval()


def training_attrs(cache_dir: str) -> np.ndarray:
    with np.load(sorted(glob.glob(f"{cache_dir}/captioned_train_n50000_s0_*.npz"))[-1]) as z:
        return z["attrs"]


def caption(d, f, b) -> str:
    return f"a {COLOUR_NAMES[f]} {d} on a {COLOUR_NAMES[b]} background"


@torch.no_grad()
def swap(ck: Path, raw: bool, cache_dir: str) -> None:
    st, tok, unet, te = load_checkpoint(ck, raw)
    attrs = training_attrs(cache_dir)
    lat = load_file(str(ck.parents[1] / "latents.safetensors"))["mean"]
    rng = np.random.default_rng(5)
    idx = rng.choice(len(attrs), 256, replace=False)
    z0, a = st["scaling_factor"] * lat[idx], attrs[idx]
    prompts = {"true": [caption(*r[:3]) for r in a],
               "wrong_digit": [caption((r[0] + 1 + rng.integers(9)) % 10, r[1], r[2]) for r in a],
               "empty": [""] * len(a)}
    ac, g = alphas_cumprod(), torch.Generator().manual_seed(0)
    for t_ in TS:
        t, noise = torch.full((len(a),), t_), torch.randn(z0.shape, generator=g)
        al = ac[t].view(-1, 1, 1, 1)
        zt = al.sqrt() * z0 + (1 - al).sqrt() * noise
        mse = {}
        for name, ps in prompts.items():
            ids = tok(ps, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            mse[name] = (unet(zt, t, encoder_hidden_states=te(ids)[0]).sample - noise).pow(2).mean().item()
        print(f"t={t_}: " + ", ".join(f"{k} {v:.4f}" for k, v in mse.items())
              + f"; digit effect {mse['wrong_digit'] - mse['true']:.4f}")


@torch.no_grad()
def encoder(ck: Path, raw: bool) -> None:
    _, tok, _, te = load_checkpoint(ck, raw)
    ps = [caption(d, 0, 4) for d in range(10)] + [caption(7, 3, 4)]  # red (0) / green (3) on blue (4)
    h = te(tok(ps, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids)[0]
    rel = [float((h[i] - h[7]).norm() / h[7].norm()) for i in range(len(ps))]
    print("digits N vs 7:", " ".join(f"{v:.3f}" for v in rel[:10]), f"| green vs red: {rel[10]:.3f}")


def bound(run: Path, cache_dir: str) -> None:
    attrs = training_attrs(cache_dir)
    st = json.loads(sorted(run.glob("checkpoints/*/state.json"))[-1].read_text())
    lat = st["scaling_factor"] * load_file(str(run / "latents.safetensors"))["mean"].numpy()
    lat = lat.reshape(len(lat), -1).astype(np.float64)

    def within_cov(keys: np.ndarray) -> np.ndarray:
        groups: dict[tuple, list[int]] = {}
        for i, k in enumerate(map(tuple, keys)):
            groups.setdefault(k, []).append(i)
        cov = np.zeros((lat.shape[1],) * 2)
        for members in groups.values():
            x = lat[members] - lat[members].mean(0)
            cov += x.T @ x
        return cov / len(lat)

    eig = {k: np.clip(np.linalg.eigvalsh(within_cov(attrs[:, cols])), 1e-9, None)
           for k, cols in (("colours", slice(1, 3)), ("colours+digit", slice(0, 3)))}
    ac = alphas_cumprod().numpy()
    for t in (100, 200, 400, 600, 800):
        snr = ac[t] / (1 - ac[t])
        mse = {k: float((snr / (1 / w + snr)).mean()) for k, w in eig.items()}
        print(f"t={t}: least ε-MSE knowing colours {mse['colours']:.4f}, colours and digit "
              f"{mse['colours+digit']:.4f}; the digit is worth {mse['colours'] - mse['colours+digit']:.4f}")


@torch.no_grad()
def readback(vae_dir: Path, n: int = 3000) -> None:
    from diffusers import AutoencoderKL

    from studio.data.captions import make_captioned_dataset
    from studio.data.digits import to_float, to_uint8
    from studio.evaluation.text_eval import PSNR_SEED, load_digit_reader, read_digits

    vae = AutoencoderKL.from_pretrained(str(vae_dir)).eval()
    images, attrs = make_captioned_dataset(n, PSNR_SEED, "train")
    rec = np.concatenate([to_uint8(vae.decode(vae.encode(to_float(images[i:i + 250])).latent_dist.mean).sample)
                          for i in range(0, n, 250)])
    reader = load_digit_reader()
    real, back = read_digits(reader, images), read_digits(reader, rec)
    print("digit  n    real   reconstructed  misread reconstructions read as (0..9)")
    for d in range(10):
        m = attrs[:, 0] == d
        print(f"{d:5d} {m.sum():4d} {(real[m] == d).mean():6.3f} {(back[m] == d).mean():9.3f}      "
              f"{np.bincount(back[m][back[m] != d], minlength=10).tolist()}")


@torch.no_grad()
def uncond(folder: Path, etas=(0.0, 1.0), n: int = 500, batch: int = 100) -> None:
    from studio.data.captions import make_captioned_dataset
    from studio.evaluation.text_eval import REAL_SEED, load_digit_reader, load_pipeline, read_colours

    if (folder / "state.json").exists():  # a checkpoint: its EMA networks, the run's exported VAE
        _, _, unet, te = load_checkpoint(folder, raw=False)
        pipe = load_pipeline(folder.parents[1] / "final")
        pipe.unet, pipe.text_encoder = unet, te
    else:
        pipe = load_pipeline(folder)
    reader = load_digit_reader()

    def read(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = read_colours(x)[2]
        p = reader.logits(torch.from_numpy(mask * 2 - 1).float()[:, None].repeat(1, 3, 1, 1)).softmax(1)
        return p.argmax(1).numpy(), p.max(1).values.numpy()

    def row(name: str, x: np.ndarray) -> None:
        d, conf = read(x)
        sure = conf >= 0.9
        print(f"{name:22s} read as 0..9 {np.bincount(d, minlength=10).tolist()}  sure {sure.mean():.3f}  "
              f"sure ones {np.bincount(d[sure], minlength=10).tolist()}")

    row("rendered images", make_captioned_dataset(n, REAL_SEED, "train")[0])
    for eta in etas:
        xs = []
        for k, i in enumerate(range(0, n, batch)):
            g = torch.Generator().manual_seed(k)
            img = pipe([""] * min(batch, n - i), num_inference_steps=50, guidance_scale=1.0, eta=eta,
                       generator=g, output_type="np").images
            xs.append(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))
        row(f"empty prompt, eta={eta:g}", np.concatenate(xs))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("swap", "encoder", "bound", "readback", "uncond"))
    p.add_argument("path", type=Path, help="a checkpoint folder (swap, encoder), a run folder (bound) "
                                           "an autoencoder folder (readback), a pipeline or checkpoint folder (uncond)")
    p.add_argument("--raw", action="store_true", help="the trained weights, not their EMA")
    p.add_argument("--etas", type=float, nargs="+", default=[0.0, 1.0], help="uncond: the DDIM η values")
    p.add_argument("--cache-dir", default="training-runs/cache-v2")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.what == "swap":
        swap(a.path, a.raw, a.cache_dir)
    elif a.what == "encoder":
        encoder(a.path, a.raw)
    elif a.what == "readback":
        readback(a.path)
    elif a.what == "uncond":
        uncond(a.path, a.etas)
    else:
        bound(a.path, a.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
