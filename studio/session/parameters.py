"""Generation settings in the ``parameters`` PNG text chunk, in the format the big web UIs write.

AUTOMATIC1111's and Forge's WebUI (and tools that read their images: ComfyUI loaders, civitai,
image browsers) keep a PNG's settings as one text chunk named ``parameters``::

    a red 7 on a blue background
    Negative prompt: green
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 3, Seed: 7, Size: 32x32, Model: digits-text

The studio writes that chunk beside its own exact ``recipe`` chunk, so images made here carry their
prompt and settings into those tools, and reads it back from their images (``parse_parameters``).
"""
from __future__ import annotations

import re
from typing import Optional

from ..core.samplers import get_sampler

# the studio's sampler names ↔ the web UIs' names (samplers the web UIs lack keep the studio's name)
WEBUI_SAMPLERS = {"ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "heun": "Heun", "dpmpp_2m": "DPM++ 2M",
                  "ddpm": "DDPM", "langevin": "Langevin"}
_FROM_WEBUI = {v.lower(): k for k, v in WEBUI_SAMPLERS.items()}


def format_parameters(recipe, width: Optional[int] = None, height: Optional[int] = None) -> str:
    """The ``parameters`` text of a recipe; ``width``/``height`` default to the recipe's size."""
    lines = [recipe.prompt or ""] if getattr(recipe, "prompt", None) is not None else [""]
    if getattr(recipe, "negative_prompt", None):
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    fields = [("Steps", recipe.steps), ("Sampler", WEBUI_SAMPLERS.get(recipe.sampler, recipe.sampler))]
    if recipe.karras:
        fields.append(("Schedule type", "Karras"))
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
    if "eta" in get_sampler(recipe.sampler).options and recipe.eta:  # the web UIs' "Eta" (DDIM, ancestral)
        fields.append(("Eta", f"{recipe.eta:g}"))
    rescale = getattr(recipe, "guidance_rescale", 0.0)
    if rescale:
        fields.append(("CFG Rescale phi", f"{rescale:g}"))
    if recipe.label is not None:
        fields.append(("Class label", recipe.label))
    lines.append(", ".join(f"{k}: {_clean(str(v))}" for k, v in fields))
    return "\n".join(lines)


def _clean(v: str) -> str:
    """A value the comma-separated line can hold (the web UIs quote values with commas)."""
    v = v.replace("\n", " ")
    return f'"{v}"' if ("," in v or ":" in v) and not v.startswith('"') else v


_FIELD = re.compile(r'\s*([\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Read a ``parameters`` chunk: {"prompt", "negative_prompt", "steps", "sampler", "scale", "seed",
    "width", "height", "karras", ...} for what it has; settings the studio does not know are dropped
    (kept under "other"). Raises ``ValueError`` when the text is not in this format."""
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
    out: dict = {"prompt": "\n".join(prompt_lines).strip(), "other": {}}
    if negative:
        out["negative_prompt"] = negative
    for key, value in _FIELD.findall(settings_line):
        key, value = key.strip(), value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        try:
            if key == "Steps":
                out["steps"] = int(value)
            elif key == "Sampler":
                name = value.lower()
                if name.endswith(" karras"):
                    name, out["karras"] = name[: -len(" karras")], True
                out["sampler"] = _FROM_WEBUI.get(name, value)
            elif key == "Schedule type":
                out["karras"] = value.lower() == "karras"
            elif key == "CFG scale":
                out["scale"] = float(value)
            elif key == "Seed":
                out["seed"] = int(value)
            elif key == "Size":
                w, h = value.lower().split("x")
                out["width"], out["height"] = int(w), int(h)
            elif key == "CFG Rescale phi":
                out["guidance_rescale"] = float(value)
            elif key == "Eta":
                out["eta"] = float(value)
            else:
                out["other"][key] = value
        except ValueError:
            raise ValueError(f"the parameters text has a bad {key!r} value: {value!r}") from None
    return out
