"""A Recipe: every setting of a run, with a JSON round-trip, so any image can be reproduced.

Each field is declared once, with its :class:`~studio.core.options.Option` (default, kind, allowed
values, help, command-line flag): ``Recipe.schema()`` is that table. ``validate`` checks every field
against it, then the rules that join fields, before anything runs; the command line, the window and
a recipe file all get the same one-line ``RecipeError``. The sampler options (eta, variance,
corrector_steps, snr) are declared by the samplers' registry; null means "the sampler's default".

Adding a setting is one line here, ``name: T = declared(Option(default, kind, help, ...))``: the JSON
round trip, validation and the ``studio sample`` flag follow from it.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from ..checkpoints.lora_files import normalise_loras
from ..checkpoints.prediction import PREDICTION_CHOICES
from ..core.guidance import (CLASSIFIER_FORMS, FALLBACK_SCALES, GUIDANCE_MODES, MAX_SCALE, Guidance, GuidanceError,
                             fallback_text)
from ..core.images import FIT_MODES
from ..core.inversion import INVERSION, INVERSION_ITERS
from ..core.loading import DTYPES, TEXT_MODEL_NAME
from ..core.options import Option, OptionError, declared, schema
from ..core.prediction import X0_MODES
from ..core.samplers import OPTION_SCHEMA, SAMPLERS, get_sampler, samplers_with
from ..core.schedule import BETA_SCHEDULES, SPACINGS

RECIPE_FORMAT = "sampling-studio/recipe@2"
DEFAULT_STRENGTH = 0.8  # diffusers' StableDiffusionImg2ImgPipeline default
# @1 wrote euler_a's η = 0 for "the default" (the engine then used 1); @2 means what it says
OLD_FORMATS = ("sampling-studio/recipe@1",)


class RecipeError(OptionError):
    """A recipe setting that is invalid; the message is one line naming the setting."""


# free text a recipe carries into files and other tools (the PNG text chunks, the web UIs' ``parameters``)
TEXT_FIELDS = ("prompt", "negative_prompt")
TEXT_CONTROLS_ALLOWED = "\n\t"  # a multi-line prompt is text; other control characters are not


def _check_plain_text(name: str, value: Optional[str]) -> None:
    """Refuse control characters (Unicode category Cc: NUL, ESC, DEL, C1; newline and tab are text) and lone
    surrogates in a text field: the PNG format forbids NUL in a text chunk, readers split settings at line
    breaks, and a lone surrogate cannot be written as UTF-8."""
    if not value:
        return
    for i, ch in enumerate(value):
        if ch in TEXT_CONTROLS_ALLOWED:
            continue
        kind = unicodedata.category(ch)
        if kind in ("Cc", "Cs"):
            what = "the control character" if kind == "Cc" else "the lone surrogate"
            raise RecipeError(f"{name}: holds {what} U+{ord(ch):04X} at character {i + 1}; a prompt is plain "
                              "text (line breaks and tabs allowed): remove it")


def sampler_option(name: str) -> Any:
    """A recipe field for the sampler option ``name``, declared by the registry (null: the sampler's default)."""
    return declared(OPTION_SCHEMA[name])


SCHEDULE_FIELDS = (
    Option("beta_schedule", None, "choice", "override the model's beta schedule", choices=BETA_SCHEDULES,
           optional=True),
    Option("beta_start", None, "float", "override the model's β_1", low=0.0, high=1.0, low_open=True,
           high_open=True, optional=True),
    Option("beta_end", None, "float", "override the model's β_T", low=0.0, high=1.0, low_open=True,
           high_open=True, optional=True),
    Option("num_train_timesteps", None, "int", "override the number of training timesteps T", low=2,
           high=100000, optional=True, flag=None),
    Option("steps_offset", None, "int", "override diffusers' steps_offset", low=0, high=1000, optional=True,
           flag=None),
    Option("set_alpha_to_one", None, "bool", "override diffusers' set_alpha_to_one", optional=True, flag=None),
    Option("trained_betas", None, "floats", "explicit β_1..β_T", optional=True, flag=None),
)
# an inverted image (studio invert, session/inversion.py): the image, its digest, how it was inverted and with
# which settings; on a run from init_noise, that x_T is this inversion's (a regeneration or an edit)
INVERSION_FIELDS = (
    dataclasses.replace(INVERSION, name="method", required=True, flag=None),
    dataclasses.replace(INVERSION_ITERS, name="iters", flag=None),
    Option("image", None, "str", "the image inverted (a run folder's recipe names its copy)", required=True, flag=None),
    Option("image_sha256", None, "str", "the image's SHA-256", flag=None),
    Option("recipe", None, "object", "the recipe of the inversion itself (its prompt, guidance, steps), on a run "
           "from its x_T", flag=None),
)
BRANCH_FIELDS = (
    Option("parent", None, "object", "the recipe of the run branched from", required=True, flag=None),
    Option("from_step", None, "int", "the parent's step (0-based) the branch continues after; -1: its x_T",
           low=-1, required=True, flag=None),
)


@dataclass(frozen=True)
class Recipe:
    model: str = declared(Option(default="default", kind="str",
                                 help="default, gmm, digits-text, a diffusers pipeline folder, a UNet2DModel folder or a "
                                      "single-file SD 1.x/2.x/SDXL checkpoint (.safetensors)"))
    sampler: str = declared(Option(default="ddim", kind="choice", choices=tuple(SAMPLERS),
                                   help="the sampler (`studio samplers` lists them)"))
    steps: int = declared(Option(default=50, kind="int", low=1, high=10000, help="number of sampler steps"))
    eta: Optional[float] = sampler_option("eta")
    variance: Optional[str] = sampler_option("variance")
    corrector_steps: Optional[int] = sampler_option("corrector_steps")
    snr: Optional[float] = sampler_option("snr")
    s_churn: Optional[float] = sampler_option("s_churn")
    s_tmin: Optional[float] = sampler_option("s_tmin")
    s_tmax: Optional[float] = sampler_option("s_tmax")
    s_noise: Optional[float] = sampler_option("s_noise")
    order: Optional[int] = sampler_option("order")
    solver_type: Optional[str] = sampler_option("solver_type")
    variant: Optional[str] = sampler_option("variant")
    prev_timestep: Optional[str] = sampler_option("prev_timestep")
    noise_type: Optional[str] = sampler_option("noise_type")
    original_inference_steps: Optional[int] = sampler_option("original_inference_steps")
    restart_times: Optional[int] = sampler_option("restart_times")
    restart_steps: Optional[int] = sampler_option("restart_steps")
    restart_sigma_min: Optional[float] = sampler_option("restart_sigma_min")
    restart_sigma_max: Optional[float] = sampler_option("restart_sigma_max")
    # unset (null): the default for the conditioning, decided by ``default_guidance`` when the recipe is validated
    guidance: Optional[str] = declared(Option(
        kind="choice", choices=GUIDANCE_MODES, optional=True, choice_labels=("none", "classifier-free", "classifier"),
        help="guidance towards the class label or the prompt: none, classifier-free (cfg) or classifier; default: "
             "cfg with a prompt (text-to-image models, as diffusers' pipelines), none with a class label"))
    # a guided run given no scale (studio sample, a sweep, the window) takes core.guidance.default_scale(mode,
    # the model's recommendation); the field's own default is the CFG fallback
    scale: float = declared(Option(default=FALLBACK_SCALES["cfg"], kind="float", low=0.0, high=MAX_SCALE, step=0.5,
                                   help="guidance scale (CFG w, 1 = conditional; classifier s); default: the "
                                        f"model's recommended scale for the guidance, else {fallback_text()}"))
    guidance_interval: tuple[float, float] = declared(Option(
        default=(0.0, 1.0), kind="pair", low=0.0, high=1.0, step=0.05,
        help="apply guidance only between these fractions of the run (0 1 = always)"))
    classifier_form: str = declared(Option(
        default="eps", kind="choice", choices=CLASSIFIER_FORMS,
        help=f"classifier guidance: eps (any sampler) or mean ({', '.join(samplers_with('classifier_mean_shift'))})"))
    classifier: Optional[str] = declared(Option(
        kind="str", optional=True, help="noise-aware classifier folder (config.json + model.safetensors)"))
    label: Optional[int] = declared(Option(kind="int", low=0, optional=True, help="class label"))
    prompt: Optional[str] = declared(Option(kind="str", optional=True, allow_empty=True, high=4000,
                                            help="text prompt (text-to-image models)"))
    negative_prompt: Optional[str] = declared(Option(
        kind="str", optional=True, allow_empty=True, high=4000,
        help="what classifier-free guidance steers away from (its unconditional branch; default: the empty "
             "prompt)"))
    width: Optional[int] = declared(Option(kind="int", low=8, high=8192, optional=True, step=8,
                                           help="image width in pixels, a multiple of the VAE's scale factor "
                                                "(text-to-image models; default: the model's)"))
    height: Optional[int] = declared(Option(kind="int", low=8, high=8192, optional=True, step=8,
                                            help="image height in pixels (text-to-image models; default: the "
                                                 "model's)"))
    guidance_rescale: float = declared(Option(
        default=0.0, kind="float", low=0.0, high=1.0, step=0.05,
        help="guidance rescale φ (Lin et al. 2024): 0 = off, 0.7 is their choice"))
    seed: int = declared(Option(default=0, kind="int", low=0, high=2**63 - 1,
                                help="seed of the initial noise and of every fresh noise draw"))
    batch: int = declared(Option(default=4, kind="int", low=1, high=1024, help="images per run"))
    spacing: Optional[str] = declared(Option(
        kind="choice", choices=SPACINGS, optional=True, flag="--timestep-spacing",
        help="default: the model's scheduler config, else the sampler's own (ddim/ddpm leading, others linspace)"))
    karras: Optional[bool] = declared(Option(
        kind="bool", optional=True,
        help=f"Karras σ spacing for {', '.join(samplers_with('takes_karras'))} (default: the model's config)"))
    x0_mode: Optional[str] = declared(Option(kind="choice", choices=X0_MODES, optional=True, flag="--x0",
                                             choice_labels=("none", "clip to [−1, 1]", "dynamic threshold"),
                                             help="x̂₀ processing (default: the model's config)"))
    eps_from_x0: bool = declared(Option(
        default=True, kind="bool",
        help="re-derive ε̂ from the clipped/thresholded x̂₀ (default on; --no-eps-from-x0 is diffusers' DDIM "
             "default use_clipped_model_output=False)"))
    schedule: dict = declared(Option(default={}, kind="mapping", fields=SCHEDULE_FIELDS, flag=None,
                                     help="overrides of the model's noise schedule"))
    device: str = declared(Option(default="auto", kind="str", help="auto, cpu, cuda, cuda:N or mps"))
    dtype: str = declared(Option(default="float32", kind="choice", choices=tuple(DTYPES),
                                 help="precision of the model's weights and activations"))
    init_noise: Optional[str] = declared(Option(kind="str", optional=True,
                                                help="float32 .npy of shape (batch, C, H, W) used as x_T"))
    # image-to-image (SDEdit, Meng et al. 2022): the image is noised to the start step and denoised from there
    init_image: Optional[str] = declared(Option(
        kind="str", optional=True,
        help="an image (PNG, JPEG, WebP, …) to start from: image-to-image (SDEdit); it is fitted to the run's size, "
             "noised to the start step with the seed's noise and denoised from there"))
    init_image_fit: str = declared(Option(
        default="crop", kind="choice", choices=FIT_MODES,
        help="fitting the image to the run's size: crop (resize the short side, centre-crop the long one) or "
             "resize (both sides, the aspect ratio may change)"))
    strength: Optional[float] = declared(Option(
        kind="float", low=0.0, high=1.0, low_open=True, optional=True, step=0.05,
        help=f"image-to-image: the fraction of the schedule to run, as diffusers' img2img (int(steps·s) steps "
             f"from the image noised to that level; 1 = from almost pure noise; default {DEFAULT_STRENGTH})"))
    start_step: Optional[int] = declared(Option(
        kind="int", low=0, optional=True,
        help="image-to-image: the plan step (0-based) to start from, instead of --strength"))
    init_image_sha256: Optional[str] = declared(Option(
        kind="str", optional=True, flag=None,
        help="the SHA-256 of the image a run started from (recorded by the run; a replay refuses another image)"))
    loras: list = declared(Option(
        default=[], kind="strs", flag="--lora",
        help="a LoRA file and its weight, FILE[:WEIGHT] (weight 1 unless given); repeat --lora for several "
             "(text-to-image models; kohya/web UI or diffusers/PEFT .safetensors)"))
    vae: Optional[str] = declared(Option(
        kind="str", optional=True,
        help="a standalone VAE (.safetensors, or a diffusers VAE folder) that decodes in place of the model's own "
             "(text-to-image models)"))
    prediction_type: Optional[str] = declared(Option(
        kind="choice", choices=PREDICTION_CHOICES, optional=True,
        help="single-file checkpoints: what the UNet predicts, overriding a sidecar .yaml, the file's markers "
             "and the family's default (v_prediction for SD 2.x, else epsilon)"))
    attention: bool = declared(Option(
        default=False, kind="bool",
        help="keep the cross-attention maps of every prompt token at every step (text-to-image models; "
             "`studio sample` writes them to attention/ in --out); the sample is the same with or without"))
    branch: Optional[dict] = declared(Option(kind="mapping", fields=BRANCH_FIELDS, optional=True, flag=None,
                                             help="a continued run: its parent's recipe and the step it left"))
    inversion: Optional[dict] = declared(Option(
        kind="mapping", fields=INVERSION_FIELDS, optional=True, flag=None,
        help="DDIM inversion (studio invert): the image inverted and how; a run from init_noise is a run from "
             "that inversion's x_T"))

    # -- the declarations ---------------------------------------------------
    @classmethod
    def schema(cls) -> dict[str, Option]:
        """Every field's declaration, {name: Option}, in field order."""
        return _SCHEMA

    # -- validation ---------------------------------------------------------
    def guidance_settings(self) -> Guidance:
        g = Guidance(self.guidance_mode(), self.scale, tuple(self.guidance_interval), self.classifier_form)
        try:
            return g.validate()
        except GuidanceError as e:
            raise RecipeError(str(e)) from None

    def validate(self) -> "Recipe":
        """The recipe with every field checked against its declaration and normalised (an integer
        where a number belongs becomes a float, a list for a pair a tuple), then the rules that join
        fields; a RecipeError (one line) for the first problem."""
        values = {}
        for name, opt in _SCHEMA.items():
            try:
                values[name] = opt.check(getattr(self, name))
            except OptionError as e:
                raise RecipeError(str(e)) from None
        for name in TEXT_FIELDS:
            _check_plain_text(name, values[name])
        r = Recipe(**values)
        r = r.replace(guidance=r.default_guidance()) if r.guidance is None else r
        try:
            get_sampler(r.sampler).resolve(r._option_values())
        except OptionError as e:
            raise RecipeError(str(e)) from None
        if r.label is not None and r.prompt is not None:
            raise RecipeError("a recipe takes a class label or a prompt, not both; leave one out")
        if r.guidance != "none" and r.label is None and r.prompt is None:
            raise RecipeError(f"{r.guidance} guidance needs {_condition_hint(r.model)}, or --guidance none")
        if r.negative_prompt is not None and r.prompt is None:
            raise RecipeError("a negative prompt needs a prompt (--prompt TEXT): classifier-free guidance steers "
                              "from the negative towards the prompt")
        if r.negative_prompt is not None and r.guidance != "cfg":
            raise RecipeError(f"a negative prompt works only through classifier-free guidance, and guidance is "
                              f"{r.guidance}; set guidance to cfg (--guidance cfg, the default with a prompt) or "
                              "leave the negative prompt out")
        r.guidance_settings()
        if r.attention and r.model in ("default", "gmm"):  # model folders are checked when opened (runner.py)
            raise RecipeError(no_cross_attention(r.model))
        r = r._checked_image_to_image()
        r._check_inversion()
        try:
            r = r.replace(loras=normalise_loras(r.loras))  # FILE:WEIGHT, every weight spelled out
        except OptionError as e:
            raise RecipeError(str(e)) from None
        if r.branch is not None:
            try:
                Recipe.from_dict(r.branch["parent"])
            except RecipeError as e:
                raise RecipeError(f"branch.parent: {e}") from None
        return r

    def _checked_image_to_image(self) -> "Recipe":
        """The rules that join the image-to-image fields; an image with neither strength nor start step
        gets ``DEFAULT_STRENGTH`` (so the recipe says what ran)."""
        if self.init_image is None:
            for name in ("strength", "start_step", "init_image_sha256"):
                if getattr(self, name) is not None:
                    raise RecipeError(f"{name} applies to image-to-image runs; give an image (--init-image PATH) "
                                      f"or leave {name} out")
            return self
        if self.init_noise is not None:
            raise RecipeError("an image to start from (init_image) and an initial noise file (init_noise) exclude "
                              "each other: the image's run starts from the image noised with the seed's noise; "
                              "leave one out")
        if self.strength is not None and self.start_step is not None:
            raise RecipeError("give --strength or --start-step, not both: each says where the run starts")
        digest = self.init_image_sha256
        if digest is not None and not (len(digest) == 64 and all(c in "0123456789abcdefABCDEF" for c in digest)):
            raise RecipeError(f"init_image_sha256 must be 64 hexadecimal digits, got {digest[:70]!r}; remove it to "
                              "record the image's digest afresh")
        r = self.replace(strength=DEFAULT_STRENGTH) if self.strength is None and self.start_step is None else self
        try:
            r.first_step()
        except ValueError as e:
            raise RecipeError(str(e)) from None
        return r

    def _check_inversion(self) -> None:
        """The rules that join an inversion's fields (session/inversion.py): a deterministic sampler (a run from
        an inverted x_T must retrace the ODE the inversion ran up), no image-to-image image beside it."""
        if self.inversion is None:
            return
        if self.init_image is not None:
            raise RecipeError("an inversion (inversion.image) and an image-to-image run (init_image) exclude each "
                              "other; leave init_image out")
        spec = get_sampler(self.sampler)
        if not spec.is_deterministic(self._option_values()):
            flag = OPTION_SCHEMA[spec.noise_option].cli_flag if spec.noise_option else ""
            what = (f"{self.sampler} with {flag} {getattr(self, spec.noise_option):g}" if spec.deterministic
                    else self.sampler)
            raise RecipeError(f"inversion needs a deterministic sampler: {what} draws fresh noise, so its run from "
                              "the inverted x_T cannot retrace the image; choose ddim or another deterministic sampler "
                              f"(`studio samplers` marks them)" + (f", or set {flag} 0" if flag else ""))
        digest = self.inversion.get("image_sha256")
        if digest is not None and not (len(digest) == 64 and all(c in "0123456789abcdefABCDEF" for c in digest)):
            raise RecipeError(f"inversion.image_sha256 must be 64 hexadecimal digits, got {digest[:70]!r}")
        if self.inversion.get("recipe") is not None:
            try:
                Recipe.from_dict(self.inversion["recipe"])
            except RecipeError as e:
                raise RecipeError(f"inversion.recipe: {e}") from None

    def first_step(self) -> int:
        """The plan step an image-to-image run starts at (``core.forward.start_index``)."""
        from ..core.forward import start_index

        return start_index(self.steps, self.strength, self.start_step)

    def default_guidance(self) -> str:
        """The guidance a recipe that sets none gets: classifier-free with a prompt (a text-to-image run,
        as diffusers' pipelines guide by default), none with a class label or neither (the class
        models' plain conditional sampling). The scale is then the model's recommended one
        (``core.guidance.default_scale``), filled in where the model is known: ``studio sample``,
        sweeps, the window."""
        return "cfg" if self.prompt is not None else "none"

    def guidance_mode(self) -> str:
        """The guidance this recipe runs with: the one set, else ``default_guidance``."""
        return self.default_guidance() if self.guidance is None else self.guidance

    def _option_values(self) -> dict:
        """The values set for the sampler's own options (None ones left out)."""
        return {name: getattr(self, name) for name in get_sampler(self.sampler).options
                if getattr(self, name) is not None}

    def sampler_options(self) -> dict:
        """Every option of the recipe's sampler: the value set, or the sampler's declared default."""
        try:
            return get_sampler(self.sampler).resolve(self._option_values())
        except (OptionError, ValueError) as e:
            raise RecipeError(str(e)) from None

    def resolved(self) -> "Recipe":
        """The same run with the sampler's options spelled out (its defaults filled in), the options of
        other samplers cleared and the guidance decided: what a run records, so its recipe file says
        exactly what ran."""
        opts = self.sampler_options()
        return self.replace(guidance=self.guidance_mode(), **{name: opts.get(name) for name in OPTION_SCHEMA})

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
        if fmt != RECIPE_FORMAT and fmt not in OLD_FORMATS:
            raise RecipeError(f"unsupported recipe format {fmt!r}; this studio reads {RECIPE_FORMAT}")
        unknown = sorted(set(d) - set(_SCHEMA) - {"format", "versions"}, key=str)
        if unknown:
            raise RecipeError(f"unknown recipe setting {unknown[0]!r}")
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in _SCHEMA}
        if fmt == "sampling-studio/recipe@1" and kw.get("sampler") == "euler_a" and kw.get("eta") in (0, None):
            kw["eta"] = None  # @1's euler_a ran with η = 1 whatever it said for 0
        return cls(**kw).validate()

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise RecipeError(f"recipe is not valid JSON ({str(e).splitlines()[0] if str(e) else 'too deep'})") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path) -> "Recipe":
        from ..core.file_reading import RECIPE_LIMIT, read_text

        text = read_text(path, RECIPE_LIMIT, RecipeError)  # regular files only, bounded: never hangs or fills memory
        try:
            return cls.from_json(text)
        except RecipeError as e:
            raise RecipeError(f"{path}: {e}") from None

    def replace(self, **changes) -> "Recipe":
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return Recipe(**d)


_SCHEMA = schema(Recipe)


def no_cross_attention(model: str) -> str:
    """The one line refusing attention maps on a model that conditions without cross-attention."""
    return (f"{_SCHEMA['attention'].cli_flag} needs a text-to-image model (its UNet's cross-attention layers); "
            f"model {model!r} has no cross-attention; leave {_SCHEMA['attention'].cli_flag} out or choose "
            f"{TEXT_MODEL_NAME} or a Stable Diffusion model")


def _condition_hint(model: str) -> str:
    """What guidance needs on ``model``, in flags: a built-in's own kind of condition, else either."""
    if model in ("default", "gmm"):
        return "a class label (--label K)"
    if model == TEXT_MODEL_NAME:
        return "a prompt (--prompt TEXT)"
    return "a class label (--label K) on a class-conditional model or a prompt (--prompt TEXT) on a text-to-image one"


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
