"""Assemble the shipped ``assets/models/digits`` folder from finished training runs.

    python -m studio.training.ship --diffusion training-runs/diffusion/final \\
        --classifier training-runs/classifier/final \\
        --evaluator training-runs/evaluator/final --out assets/models/digits

Copies the diffusers UNet folder (EMA weights), the guidance classifier and the
evaluator, writes ``class_names.json``, a ``samples.png`` grid (DDIM 25 steps,
CFG w=3, one row per class), runs a quick sanity evaluation (``--eval-n``
samples with DDIM-50 / CFG w=3, evaluator accuracy against the requested label)
and writes ``SHA256SUMS`` for every weight file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from ..core.loading import sha256_file  # noqa: E402

CLASS_NAMES = [str(i) for i in range(10)]
UNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json")


def sha256(path: Path) -> str:
    return sha256_file(path)


def write_sha256sums(folder: Path) -> Path:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*.safetensors"))
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    out = folder / "SHA256SUMS"
    out.write_text("\n".join(lines) + "\n")
    return out


@torch.no_grad()
def guided_accuracy(unet, evaluator, n: int = 100, steps: int = 50, guidance: float = 3.0,
                    seed: int = 0, batch: int = 50) -> dict:
    """Evaluator accuracy of CFG samples against the requested labels."""
    from .diffusion import ddim_cfg_sample

    labels = torch.arange(10).repeat(n // 10 + 1)[:n]
    correct = 0
    per_class = torch.zeros(10)
    counts = torch.zeros(10)
    for i in range(0, n, batch):
        y = labels[i:i + batch]
        x = ddim_cfg_sample(unet, y, steps=steps, guidance=guidance, seed=seed + i)
        pred = evaluator.logits(x).argmax(1)
        ok = (pred == y).float()
        correct += ok.sum().item()
        per_class.index_add_(0, y, ok)
        counts.index_add_(0, y, torch.ones_like(ok))
    return {"n": n, "steps": steps, "guidance": guidance, "accuracy": correct / n,
            "per_class": [round(v, 3) for v in (per_class / counts.clamp(min=1)).tolist()]}


def assemble(diffusion: Path, classifier: Path | None, evaluator: Path | None, out: Path,
             eval_n: int = 100, guidance: float = 3.0) -> dict:
    from diffusers import UNet2DModel

    from .diffusion import sample_grid
    from ..evaluation.evaluator import load_evaluator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in UNET_FILES:
        shutil.copy2(Path(diffusion) / name, out / name)
    for sub, src in (("classifier", classifier), ("evaluator", evaluator)):
        if src is None:
            continue
        (out / sub).mkdir(exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(Path(src) / name, out / sub / name)
    (out / "class_names.json").write_text(json.dumps(CLASS_NAMES) + "\n")

    unet = UNet2DModel.from_pretrained(str(out)).eval()
    report: dict = {"unet_params": sum(p.numel() for p in unet.parameters())}
    t0 = time.time()
    sample_grid(unet, per_class=8, steps=25, guidance=guidance, seed=0).save(out / "samples.png")
    report["grid_seconds"] = round(time.time() - t0, 1)
    if evaluator is not None and eval_n:
        ev = load_evaluator(out / "evaluator")
        t0 = time.time()
        report["guided_eval"] = guided_accuracy(unet, ev, n=eval_n, guidance=guidance)
        report["guided_eval"]["seconds"] = round(time.time() - t0, 1)
    for f in out.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
    write_sha256sums(out)
    report["total_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.training.ship")
    p.add_argument("--diffusion", required=True, type=Path, help="diffusers export folder")
    p.add_argument("--classifier", type=Path, default=None)
    p.add_argument("--evaluator", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("assets/models/digits"))
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rep = assemble(a.diffusion, a.classifier, a.evaluator, a.out, a.eval_n, a.guidance)
    print(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
