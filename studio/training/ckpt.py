"""What a training run keeps on disk: safetensors checkpoints with exact resume, EMA, the loss log."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def state_to_cpu(sd: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> dict:
    """Save optimizer tensors as safetensors; return the JSON-able non-tensor part."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    save_file(tensors, str(path))
    return {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, path: Path, meta: dict) -> None:
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def numpy_rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_numpy_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


class EMA:
    """Exponential moving average of parameters (with the usual warm-up)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, sd: dict) -> None:
        for k in self.shadow:
            self.shadow[k] = sd[k].clone().float()

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")
            and (p / "state.json").is_file()]
    return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(out_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def write_checkpoint(out_dir: Path, step: int, files: dict[str, dict], opt, state: dict,
                     keep: int = 3) -> Path:
    """Atomically write ``checkpoints/step_XXXXXX`` with safetensors files + state.json."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, sd in files.items():
        save_file(state_to_cpu(sd), str(tmp / name))
    state = dict(state)
    state["optimizer"] = save_optimizer(opt, tmp / "optimizer.safetensors")
    state["step"] = int(step)
    state["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    # prune old checkpoints (the PNG grids are kept under samples/)
    dirs = checkpoint_dirs(out_dir)
    for d in dirs[:-keep] if keep > 0 else []:
        shutil.rmtree(d, ignore_errors=True)
    return final


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / "state.json").read_text())


def restore_checkpoint(ckpt: Path, modules: dict, opt, rng: np.random.Generator, gen: torch.Generator) -> dict:
    """Load ``name.safetensors`` into each module of ``modules``, the optimizer and both RNGs; return state.json."""
    ckpt = Path(ckpt)
    st = read_state(ckpt)
    for name, module in modules.items():
        module.load_state_dict(load_file(str(ckpt / f"{name}.safetensors")))
    load_optimizer(opt, ckpt / "optimizer.safetensors", st["optimizer"])
    set_numpy_rng_state(rng, st["numpy_rng"])
    gen.set_state(load_file(str(ckpt / "rng.safetensors"))["torch_generator"])
    return st


class LossLog:
    """Append-only ``loss.csv``; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None):
        self.path = Path(path)
        self.fields = fields
        rows = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")  # a column a newer log lacks
            w.writeheader()
            w.writerows(rows)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=fields)

    def write(self, **row) -> None:
        self._w.writerow(row)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def resumed_steps(state: dict, steps: int) -> int:
    """The total step count a resumed run keeps: the one its first invocation fitted to a time
    limit, when the same total was asked for again; otherwise ``steps``."""
    if state.get("fitted_from") == steps and state.get("fitted_total"):
        return int(state["fitted_total"])
    return steps
