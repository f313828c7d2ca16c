"""One sweep worker: opens the model once, then runs cells and measures them.

The same class runs in a local worker process (local.py) and as a Ray actor (ray_exec.py), so a
cell's images do not depend on where it ran: a cell is ``Run(recipe).run_to_end()`` from the
recipe's seed, with the worker's torch threads fixed (a CPU reduction's order, and so its last
bits, can depend on the thread count).

``run`` never raises: it returns a payload ``{"key", "status", …}`` where status is ``ok``,
``failed`` (the chain diverged: a result of the cell, written like any other) or ``error`` (the
cell could not run here: retried by the next sweep). ``fatal`` marks errors that every cell would
hit (the model does not open, the model refuses a setting), which stop the sweep.
"""
from __future__ import annotations

import io
import os
import socket
import time
from typing import Optional

def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else e.__class__.__name__


def cannot_open(model: str, e: BaseException) -> str:
    """The one line of a model that does not open (the driver's check, a worker's load)."""
    return f"cannot open the model {model!r}: {one_line(e)}"


class CellWorker:
    """``config``: model, device, dtype, classifier, prediction_type, metrics, reference_steps, threads,
    fingerprint, allow_pickle."""

    def __init__(self, config: dict):
        self.config = dict(config)
        self.model = None
        self.metrics = None
        self.load_error: Optional[str] = None
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self._versions: Optional[dict] = None
        self._load()

    def _load(self) -> None:
        import torch

        from ..checkpoints.models import load_model
        from .metrics import CellMetrics

        threads = self.config.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        c = self.config
        try:
            self.model = load_model(c["model"], c.get("device", "auto"), c.get("dtype", "float32"),
                                    allow_pickle=c.get("allow_pickle", False), classifier=c.get("classifier"),
                                    prediction_type=c.get("prediction_type"))
            self.metrics = CellMetrics(c["model"], self.model, tuple(c["metrics"]), int(c["reference_steps"]))
        except Exception as e:  # reported with the first cell (a process pool's initializer cannot)
            self.load_error = cannot_open(c["model"], e)

    def run(self, key: str, recipe_dict: dict) -> dict:
        if self.load_error:
            return {"key": key, "status": "error", "fatal": True, "error": self.load_error}
        t0 = time.perf_counter()
        try:
            payload = self._run(key, recipe_dict)
            payload["worker_seconds"] = time.perf_counter() - t0  # sampling, metrics and encoding
            return payload
        except MemoryError:
            return {"key": key, "status": "error", "fatal": False, "error": "out of memory"}
        except Exception as e:  # a worker never dies of a cell; the driver decides
            from ..core.records import SamplingError
            from ..core.weight_health import DamagedWeights
            from ..session.recipe import RecipeError

            if isinstance(e, DamagedWeights):  # every cell of this model would fail the same way
                return {"key": key, "status": "error", "fatal": True, "error": one_line(e)}
            if isinstance(e, SamplingError):
                return {"key": key, "status": "failed", "error": one_line(e), "worker": self.where}
            fatal = isinstance(e, (RecipeError, ValueError)) and "out of memory" not in str(e).lower()
            return {"key": key, "status": "error", "fatal": fatal, "error": one_line(e)}

    def _run(self, key: str, recipe_dict: dict) -> dict:
        import torch

        from ..session.frames import make_grid, to_uint8
        from ..session.output import final_scale, png_bytes_info
        from ..session.provenance import added_files
        from ..session.parameters import format_parameters
        from ..session.recipe import Recipe
        from ..session.runner import Run
        from ..session.recipe import versions
        from .cells import npz_bytes, recipe_document_json

        recipe = Recipe.from_dict(recipe_dict)
        t0 = time.perf_counter()
        run = Run(recipe, model=self.model)
        traj = run.run_to_end()
        x = traj.final()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - t0
        try:
            nfe = traj.meta[-1].nfe
            images = traj.decodes.final() if traj.decodes is not None else to_uint8(x)
            x = x.detach().cpu()
            metrics, arrays = self.metrics.compute(run.recipe, x, nfe, seconds)
        finally:
            traj.close()
        grid = make_grid(images)
        from PIL import Image

        img = Image.fromarray(grid)
        scale = final_scale(grid)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        buf = io.BytesIO()
        if self._versions is None:
            self._versions = versions()
        weights = {**(self.config.get("fingerprint") or {}), **added_files(run.recipe.loras, run.recipe.vae)}
        doc = recipe_document_json(run.recipe, self._versions, weights)  # the PNG carries the cell's LoRAs, VAE
        h, w = int(images.shape[1]), int(images.shape[2])
        img.save(buf, format="PNG", pnginfo=png_bytes_info(doc, format_parameters(run.recipe, w, h)))
        arrays["x"] = x.numpy().astype("float32", copy=False)
        return {"key": key, "status": "ok", "metrics": metrics, "seconds": seconds, "worker": self.where,
                "device": str(self.model.device), "png": buf.getvalue(), "npz": npz_bytes(arrays)}
