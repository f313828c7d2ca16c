"""Generation settings in the ``parameters`` PNG text chunk, in the format the big web UIs write.

AUTOMATIC1111's and Forge's WebUI (and tools that read their images: ComfyUI loaders, civitai,
image browsers) keep a PNG's settings as one text chunk named ``parameters``::

    a red 7 on a blue background
    Negative prompt: green
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 3, Seed: 7, Size: 32x32, Model: digits-text

The studio writes that chunk beside its own exact ``recipe`` chunk, so images made here carry their
prompt and settings into those tools, and reads it back from their images (``parse_parameters``).

Samplers go by the web UIs' menu names (:data:`WEBUI_SAMPLERS`). Since A1111 1.9 the σ spacing is a
field of its own ("Sampler: DPM++ 2M, Schedule type: Karras"), which is what the studio writes; older
images name both at once ("DPM++ 2M Karras"), and both forms are read. A1111's "Automatic" schedule is
the sampler's own default (Karras for DPM++ 2M, exponential for DPM++ 2M SDE, …), so it is read as that.
A sampler or schedule the studio does not have reads with a one-line warning and a fallback.

LoRAs are written as the web UIs write them: a ``<lora:NAME:WEIGHT>`` tag for each after the prompt and
their short hashes in "Lora hashes"; reading cuts the tags out of the prompt (the text encoder never
sees them) into ``lora_tags``, which ``studio.checkpoints.lora_tags.resolve_lora_tags`` finds as files.
An image-to-image run writes its "Denoising strength" (the web UIs do not record the image it started
from), and reading gives it back as ``strength``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..checkpoints.lora_tags import LoraTag, format_lora_tag, lora_hashes_field, parse_lora_hashes, split_lora_tags
from ..core.samplers import SAMPLERS, get_sampler
from .recipe import DEFAULT_STRENGTH


@dataclass(frozen=True)
class WebUISampler:
    """One entry of the web UIs' sampler menu and the studio run it names.

    ``options`` are the studio options the name itself implies ("DPM++ 2M SDE Heun": solver_type heun).
    ``fields`` are the studio options the web UIs keep in a field of their own, {option: (field, the web
    UI's default)}: the field is written when the value differs from that default (as A1111 writes its
    "Eta" and "UniPC order"), and a field that is absent reads as that default. ``automatic`` is the σ
    spacing A1111's "Automatic" schedule picks for this sampler (``sd_samplers_kdiffusion``'s options)."""

    label: str
    sampler: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
    automatic: str = "uniform"  # "karras" | "exponential" | "uniform"


_ETA = {"eta": ("Eta", 1.0)}  # A1111's eta_ancestral, for every k-diffusion sampler that draws noise
# A1111's UniPC defaults (its uni_pc_variant and uni_pc_order settings); the studio's are diffusers' bh2, order 2
_UNIPC = {"variant": ("UniPC variant", "bh1"), "order": ("UniPC order", 3)}

WEBUI_SAMPLERS: tuple[WebUISampler, ...] = (
    WebUISampler("DPM++ 2M", "dpmpp_2m", automatic="karras"),
    WebUISampler("DPM++ SDE", "dpmpp_sde", fields=_ETA, automatic="karras"),
    WebUISampler("DPM++ 2M SDE", "dpmpp_2m_sde", {"solver_type": "midpoint"}, _ETA, "exponential"),
    WebUISampler("DPM++ 2M SDE Heun", "dpmpp_2m_sde", {"solver_type": "heun"}, _ETA, "exponential"),
    WebUISampler("DPM++ 2S a", "dpmpp_2s_a", fields=_ETA, automatic="karras"),
    WebUISampler("DPM++ 3M SDE", "dpmpp_3m_sde", fields=_ETA, automatic="exponential"),
    WebUISampler("Euler a", "euler_a", fields=_ETA),
    WebUISampler("Euler", "euler"),
    WebUISampler("LMS", "lms"),
    WebUISampler("Heun", "heun"),
    WebUISampler("DPM2", "dpm2", automatic="karras"),
    WebUISampler("DPM2 a", "dpm2_a", fields=_ETA, automatic="karras"),
    WebUISampler("DDIM", "ddim", fields={"eta": ("Eta DDIM", 0.0)}),
    WebUISampler("UniPC", "unipc", fields=_UNIPC),
    WebUISampler("DEIS", "deis"),
    WebUISampler("DDPM", "ddpm"),
    WebUISampler("LCM", "lcm"),
    WebUISampler("Restart", "restart", automatic="karras"),
    WebUISampler("Langevin", "langevin"),  # the studio's own: no web UI has it
)
# what A1111 reads for a sampler it does not have (its first sampler); the studio does the same
FALLBACK = WEBUI_SAMPLERS[0]
# A1111's schedule types (sd_schedulers, Forge's additions): the σ spacing each is, where the studio has it
SCHEDULES = {"automatic": None, "uniform": False, "karras": True}
OTHER_SCHEDULES = ("Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps",
                   "Align Your Steps GITS", "Align Your Steps 11", "Align Your Steps 32", "Simple", "Normal",
                   "DDIM", "Beta", "Turbo")
_SCHEDULE_LABELS = sorted(["Automatic", "Uniform", "Karras", *OTHER_SCHEDULES], key=len, reverse=True)
_BY_LABEL = {w.label.lower(): w for w in WEBUI_SAMPLERS}
_BY_STUDIO_NAME = {w.sampler: w for w in reversed(WEBUI_SAMPLERS)}  # the first entry of each sampler


def webui_sampler(sampler: str, options: Optional[Mapping[str, Any]] = None) -> WebUISampler:
    """The menu entry a run of ``sampler`` with ``options`` (resolved against its declaration) is: the
    one whose implied options it has; a sampler without an entry keeps the studio's name."""
    opts = get_sampler(sampler).resolve(options)
    for w in WEBUI_SAMPLERS:
        if w.sampler == sampler and all(opts.get(k) == v for k, v in w.options.items()):
            return w
    return WebUISampler(sampler, sampler)


def format_parameters(recipe, width: Optional[int] = None, height: Optional[int] = None) -> str:
    """The ``parameters`` text of a recipe; ``width``/``height`` default to the recipe's size."""
    lines = [_with_lora_tags(getattr(recipe, "prompt", None) or "", _loras(recipe))]
    if getattr(recipe, "negative_prompt", None):
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    spec = get_sampler(recipe.sampler)
    opts = spec.resolve({name: getattr(recipe, name, None) for name in spec.options})
    entry = webui_sampler(recipe.sampler, opts)
    fields = [("Steps", recipe.steps), ("Sampler", entry.label)]
    if spec.takes_karras and recipe.karras is not None:  # None: the model's config decides, so it is not said
        fields.append(("Schedule type", "Karras" if recipe.karras else "Uniform"))
    if recipe.guidance == "cfg":
        fields.append(("CFG scale", f"{recipe.scale:g}"))
    elif recipe.guidance == "none":
        fields.append(("CFG scale", "1"))
    fields.append(("Seed", recipe.seed))
    w = width or getattr(recipe, "width", None)
    h = height or getattr(recipe, "height", None)
    if w and h:
        fields.append(("Size", f"{w}x{h}"))
    fields.append(("Model", _clean(str(recipe.model))))
    denoising = denoising_strength(recipe)
    if denoising is not None:
        fields.append(("Denoising strength", denoising))
    for opt, (key, webui_default) in entry.fields.items():  # as A1111: only what differs from its default
        if opts[opt] != webui_default:
            fields.append((key, f"{opts[opt]:g}" if isinstance(opts[opt], float) else opts[opt]))
    rescale = getattr(recipe, "guidance_rescale", 0.0)
    if rescale:
        fields.append(("CFG Rescale phi", f"{rescale:g}"))
    if recipe.label is not None:
        fields.append(("Class label", recipe.label))
    hashes = lora_hashes_field(_loras(recipe))
    if hashes:
        fields.append(("Lora hashes", hashes))
    lines.append(", ".join(f"{k}: {_clean(str(v))}" for k, v in fields))
    return "\n".join(lines)


def _loras(recipe) -> list:
    from ..checkpoints.lora_files import parse_lora

    return [parse_lora(e) for e in getattr(recipe, "loras", None) or ()]


def _with_lora_tags(prompt: str, loras: list) -> str:
    """The prompt with a ``<lora:NAME:WEIGHT>`` tag for each LoRA after it, as the web UIs write it."""
    return " ".join([prompt, *(format_lora_tag(c) for c in loras)]) if loras else prompt


def denoising_strength(recipe) -> Optional[str]:
    """The web UIs' "Denoising strength" of an image-to-image recipe (None for one that starts from noise):
    its strength, or for a start step k of N steps the strength that runs the same N − k steps (int(N·s) =
    N − k, as diffusers and A1111 count them)."""
    if getattr(recipe, "init_image", None) is None:
        return None
    steps, strength, start = recipe.steps, getattr(recipe, "strength", None), getattr(recipe, "start_step", None)
    if strength is not None or start is None:
        return f"{strength if strength is not None else DEFAULT_STRENGTH:g}"
    run = steps - start
    for value in (run / steps, (run + 0.5) / steps):  # the plain ratio when its text reads back exactly
        text = f"{value:.6g}"
        if int(steps * float(text)) == run:
            return text
    return f"{(run + 0.5) / steps:.12g}"


def _clean(v: str) -> str:
    """A value the comma-separated line can hold (the web UIs quote values with commas)."""
    v = v.replace("\n", " ")
    return f'"{v}"' if ("," in v or ":" in v) and not v.startswith('"') else v


_FIELD = re.compile(r'\s*([\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Read a ``parameters`` chunk: {"prompt", "negative_prompt", "steps", "sampler", "scale", "seed",
    "width", "height", "karras", the sampler's options the text sets (eta, solver_type, variant, order),
    "strength" (its "Denoising strength"), ...} for what it has, "lora_tags" (the prompts' LoRA tags, cut
    out of "prompt" and "negative_prompt", with their hashes), and "warnings": one line for each thing read approximately (a sampler or
    schedule the studio does not have). Settings the studio does not know are kept under "other".
    Raises ``ValueError`` when the text is not in this format."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the parameters text is empty")
    lines = text.strip("\n").split("\n")
    settings_line = lines[-1]
    if not re.match(r"\s*Steps:", settings_line):
        raise ValueError("no 'Steps: …' line; this is not a web-UI parameters text")
    prompt_lines, negative = [], None
    for line in lines[:-1]:
        if line.startswith("Negative prompt:"):
            negative = line[len("Negative prompt:"):].strip()
        elif negative is not None:
            negative += "\n" + line
        else:
            prompt_lines.append(line)
    out: dict = {"prompt": "\n".join(prompt_lines).strip(), "other": {}, "warnings": []}
    if negative:
        out["negative_prompt"] = negative
    sampler, schedule = None, None
    for key, value in _FIELD.findall(settings_line):
        key, value = key.strip(), value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        try:
            if key == "Steps":
                out["steps"] = int(value)
            elif key == "Sampler":
                sampler = value
            elif key == "Schedule type":
                schedule = value
            elif key == "CFG scale":
                out["scale"] = float(value)
            elif key == "Seed":
                out["seed"] = int(value)
            elif key == "Size":
                w, h = value.lower().split("x")
                out["width"], out["height"] = int(w), int(h)
            elif key == "CFG Rescale phi":
                out["guidance_rescale"] = float(value)
            elif key == "Denoising strength":
                out["strength"] = float(value)
                if not 0 < out["strength"] <= 1:
                    raise ValueError(value)
            else:
                out["other"][key] = value
        except ValueError:
            raise ValueError(f"the parameters text has a bad {key!r} value: {value!r}") from None
    if sampler is not None:
        out.update(_read_sampler(sampler, schedule, out["other"], out["warnings"]))
    _read_lora_tags(out)
    return out


def _read_lora_tags(out: dict) -> None:
    """Cut the ``<lora:NAME:WEIGHT>`` tags out of the prompts (the text the model sees, as the web UIs do)
    into ``out["lora_tags"]``, each with its short hash from "Lora hashes" (kept in "other" as well)."""
    out["prompt"], tags = split_lora_tags(out["prompt"], out["warnings"])
    if out.get("negative_prompt"):
        out["negative_prompt"], negative = split_lora_tags(out["negative_prompt"], out["warnings"])
        tags += negative
    hashes = parse_lora_hashes(out["other"].get("Lora hashes", ""))
    out["lora_tags"] = [LoraTag(t.name, t.weight, hashes.get(t.name)) for t in tags]


def _read_sampler(value: str, schedule: Optional[str], other: dict, warnings: list) -> dict:
    """The studio sampler, its options and Karras σ that a web UI's "Sampler" (and "Schedule type") name;
    the fields that hold its options are taken out of ``other``."""
    name = value.strip().lower()
    entry = _BY_LABEL.get(name) or _BY_STUDIO_NAME.get(name)
    if entry is None and name in SAMPLERS:  # a studio sampler no web UI has, by the studio's name
        entry = WebUISampler(name, name)
    suffix = None
    if entry is None:  # A1111 before 1.9: the schedule is the end of the name ("DPM++ 2M SDE Karras")
        for label in _SCHEDULE_LABELS:
            if name.endswith(" " + label.lower()):
                name, suffix = name[: -len(label) - 1], label
                entry = _BY_LABEL.get(name)
                break
    if entry is None:
        warnings.append(f"the sampler {value!r} is not one the studio has; read as {FALLBACK.label!r} "
                        f"({FALLBACK.sampler}), as the web UIs read a sampler they lack")
        entry = FALLBACK
    spec = SAMPLERS[entry.sampler]
    out: dict = {"sampler": entry.sampler, **entry.options}
    for opt, (key, webui_default) in entry.fields.items():
        given = other.pop(key, None)
        try:
            out[opt] = spec.options[opt].check(webui_default if given is None else _typed(given, webui_default))
        except ValueError:
            raise ValueError(f"the parameters text has a bad {key!r} value: {given!r}") from None
    if spec.takes_karras:
        out["karras"] = _read_schedule(schedule, suffix, entry, warnings)
    return out


def _typed(text: str, like: Any) -> Any:
    """A field's text as the type of the web UI's default for it."""
    return type(like)(text) if isinstance(like, (int, float)) else text.strip().lower()


def _read_schedule(field_value: Optional[str], suffix: Optional[str], entry: WebUISampler, warnings: list) -> bool:
    """Karras σ or not, from the "Schedule type" field or the end of an older combined name; neither (an
    image from before A1111 had schedules) is the uniform spacing those versions ran."""
    given = field_value if field_value is not None and (field_value.lower() != "automatic" or suffix is None) \
        else suffix
    if given is None:
        return False
    karras = SCHEDULES.get(given.lower(), "other")
    if karras is None:  # "Automatic": the sampler's own
        if entry.automatic in ("karras", "uniform"):
            return entry.automatic == "karras"
        warnings.append(f"the schedule type 'Automatic' is {entry.automatic} σ spacing for {entry.label!r}, which "
                        "the studio does not have; read as Uniform (Karras off)")
        return False
    if karras == "other":
        warnings.append(f"the schedule type {given!r} is not one the studio has; read as Uniform (Karras off)")
        return False
    return karras


def webui_sampler_settings(name: str) -> dict:
    """The recipe settings a web UI's sampler menu name stands for, as a parameters text would be read
    ("DPM++ 2M SDE Karras": sampler dpmpp_2m_sde, solver_type midpoint, eta 1, karras True); a ValueError
    (one line) for a name the studio does not have."""
    warnings: list[str] = []
    out = _read_sampler(name, None, {}, warnings)
    if warnings:
        raise ValueError(warnings[0])
    return out
