"""A Recipe: every setting of a run, with a JSON round-trip, so any image can be reproduced."""
from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from ..core.guidance import Guidance, GuidanceError
from ..core.samplers import SAMPLERS
from ..core.schedule import SPACINGS

RECIPE_FORMAT = "sampling-studio/recipe@1"


class RecipeError(ValueError):
    """A recipe setting that is invalid; the message names the setting."""


@dataclass(frozen=True)
class Recipe:
    model: str = "default"
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    variance: str = "fixed_small"
    corrector_steps: int = 1
    snr: float = 0.16
    guidance: str = "none"
    scale: float = 3.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    classifier_form: str = "eps"
    classifier: Optional[str] = None
    label: Optional[int] = None
    seed: int = 0
    batch: int = 4
    spacing: Optional[str] = None
    karras: Optional[bool] = None  # None: the model's scheduler config (use_karras_sigmas)
    x0_mode: Optional[str] = None
    eps_from_x0: bool = True  # ε̂ re-derived from the processed x̂₀ (diffusers use_clipped_model_output=True)
    schedule: dict = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"
    init_noise: Optional[str] = None
    branch: Optional[dict] = None  # {"parent": recipe dict, "from_step": k} for a continued run

    # -- validation ---------------------------------------------------------
    def guidance_settings(self) -> Guidance:
        g = Guidance(self.guidance, float(self.scale) if isinstance(self.scale, (int, float)) else self.scale,
                     tuple(self.guidance_interval), self.classifier_form)
        try:
            return g.validate()
        except GuidanceError as e:
            raise RecipeError(str(e)) from None

    def validate(self) -> "Recipe":
        if self.sampler not in SAMPLERS:
            raise RecipeError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or not (1 <= self.steps <= 10000):
            raise RecipeError(f"steps must be an integer from 1 to 10000, got {self.steps!r}")
        if not isinstance(self.batch, int) or not (1 <= self.batch <= 1024):
            raise RecipeError(f"batch must be an integer from 1 to 1024, got {self.batch!r}")
        if not isinstance(self.seed, int) or not (0 <= self.seed < 2**63):
            raise RecipeError(f"seed must be an integer from 0 to 2^63−1, got {self.seed!r}")
        if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta) and 0 <= self.eta <= 1):
            raise RecipeError(f"eta must be a number from 0 to 1, got {self.eta!r}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise RecipeError(f"unknown timestep spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.karras not in (None, True, False):
            raise RecipeError(f"karras must be true, false or null, got {self.karras!r}")
        if self.x0_mode not in (None, "none", "clip", "threshold"):
            raise RecipeError(f"unknown x0 processing {self.x0_mode!r}; choose none, clip or threshold")
        if self.eps_from_x0 not in (True, False):
            raise RecipeError(f"eps_from_x0 must be true or false, got {self.eps_from_x0!r}")
        if self.variance not in ("fixed_small", "fixed_large"):
            raise RecipeError(f"unknown DDPM variance {self.variance!r}; choose fixed_small or fixed_large")
        if self.label is not None and (not isinstance(self.label, int) or self.label < 0):
            raise RecipeError(f"label must be a non-negative integer, got {self.label!r}")
        if self.guidance != "none" and self.label is None:
            raise RecipeError("guidance needs a class label; set a label (--label K)")
        self.guidance_settings()
        return self

    # -- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["guidance_interval"] = list(self.guidance_interval)
        return {"format": RECIPE_FORMAT, **d, "versions": versions()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        if not isinstance(d, dict):
            raise RecipeError("a recipe must be a JSON object")
        fmt = d.get("format", RECIPE_FORMAT)
        if fmt != RECIPE_FORMAT:
            raise RecipeError(f"unsupported recipe format {fmt!r}; this studio reads {RECIPE_FORMAT}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"format", "versions"})
        if unknown:
            raise RecipeError(f"unknown recipe setting {unknown[0]!r}")
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in known}
        if "guidance_interval" in kw:
            gi = kw["guidance_interval"]
            if not (isinstance(gi, (list, tuple)) and len(gi) == 2):
                raise RecipeError("guidance_interval must be a pair [start, end]")
            kw["guidance_interval"] = (float(gi[0]), float(gi[1]))
        for k in ("eta", "scale", "snr"):
            if isinstance(kw.get(k), int) and not isinstance(kw.get(k), bool):
                kw[k] = float(kw[k])
        try:
            return cls(**kw).validate()
        except TypeError as e:
            raise RecipeError(f"bad recipe: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"recipe is not valid JSON ({e})") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path) -> "Recipe":
        try:
            text = open(path, encoding="utf-8").read()
        except OSError as e:
            raise RecipeError(f"{path}: cannot read recipe ({e.strerror or e})") from None
        try:
            return cls.from_json(text)
        except RecipeError as e:
            raise RecipeError(f"{path}: {e}") from None

    def replace(self, **changes) -> "Recipe":
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return Recipe(**d)


def versions() -> dict:
    """Versions that a run depends on (read from package metadata: importing diffusers is slow)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"studio": __version__, "torch": v("torch"), "diffusers": v("diffusers"), "numpy": v("numpy"),
            "python": platform.python_version()}
