"""LoRAs as the web UIs name them in an image's ``parameters`` text: ``<lora:NAME:WEIGHT>`` tags and "Lora hashes".

AUTOMATIC1111's WebUI (and Forge) take LoRAs from the prompt itself: ``a cat <lora:inkStyle:0.8>`` applies
the file ``inkStyle.safetensors`` of its LoRA folder at weight 0.8, and the tag is cut out of the prompt
before the text encoder sees it (``modules/extra_networks.py``: ``parse_prompt``). Its infotext then
names each LoRA with a short hash (``extensions-builtin/Lora/extra_networks_lora.py``)::

    Lora hashes: "inkStyle: 6e2c6c0b2b5d, other: 0123456789ab"

The short hash is the first 12 hex digits of ``NetworkOnDisk.hash`` (``network.py``): the file's
``sshs_model_hash`` metadata when it has one, else, for a ``.safetensors`` file, the SHA-256 of the
bytes after its header (``modules/hashes.py``: ``addnet_hash_safetensors``; civitai calls it
"AutoV3"). Forge fork versions hash the whole file instead; a hash given is accepted when it is any of
the three.

Where a named LoRA is looked for (``lora_folders``): the folder of the model file, its ``Lora`` and
``loras`` subfolders, and a ``Lora`` folder beside it, which is where a web UI keeps them
(``models/Stable-diffusion/`` beside ``models/Lora/``). A diffusers model folder counts as a model file
inside its parent folder. The name is the file's name without ``.safetensors``.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studio.core import cancel

from .header import CheckpointError, read_header
from .lora_files import WEIGHT, LoraChoice, parse_lora

# A1111's extra-network syntax (modules/extra_networks.py re_extra_net): <kind:arg:arg…>
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")  # "lyco": the LyCORIS extension's tag; the built-in Lora extension reads both
SHORT_HASH = 12
LORA_SUFFIX = ".safetensors"
SUBFOLDERS = ("Lora", "loras")


@dataclass(frozen=True)
class LoraTag:
    """One ``<lora:NAME:WEIGHT>`` of a prompt, with the short hash the text's "Lora hashes" gives it (if any)."""
    name: str
    weight: float = 1.0
    hash: Optional[str] = None


def split_lora_tags(text: str, warnings: list[str]) -> tuple[str, list[LoraTag]]:
    """``text`` without its LoRA tags (what the text encoder sees, as the web UIs cut them), and the tags.

    A1111's forms: ``<lora:NAME>`` (weight 1), ``<lora:NAME:W>``, ``<lora:NAME:TE:UNET>`` (text-encoder
    and UNet weights) and the named ``te=``/``unet=``. The studio has one weight per LoRA: the UNet's, with
    a warning when the text encoder's differs. A tag whose weight is not a number is cut with a warning."""
    tags: list[LoraTag] = []

    def cut(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2)
        if kind.lower() not in LORA_KINDS:
            return match.group(0)
        tag = _read_tag(args, warnings)
        if tag is not None:
            tags.append(tag)
        return ""

    stripped = EXTRA_NETWORK.sub(cut, text)
    return re.sub(r"[ \t]{2,}", " ", stripped).strip(), tags


def _read_tag(args: str, warnings: list[str]) -> Optional[LoraTag]:
    parts = args.split(":")
    name = parts[0].strip()
    positional = [p.strip() for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    try:
        te = float(named.get("te", positional[0] if positional else 1.0))
        unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
    except ValueError:
        warnings.append(f"the LoRA tag <lora:{args}> has a weight that is not a number; it is left out")
        return None
    if not name:
        warnings.append(f"the LoRA tag <lora:{args}> names no file; it is left out")
        return None
    if not (math.isfinite(unet) and WEIGHT.low <= unet <= WEIGHT.high):
        warnings.append(f"the LoRA {name!r} has weight {unet:g}, outside {WEIGHT.allowed()}; it is left out")
        return None
    if te != unet:
        warnings.append(f"the LoRA {name!r} has text-encoder weight {te:g} and UNet weight {unet:g}; the studio "
                        f"applies one weight to both, {unet:g}")
    return LoraTag(name, unet)


def parse_lora_hashes(text: str) -> dict[str, str]:
    """{name: short hash} of a "Lora hashes" value (``name: hash, name: hash``)."""
    out = {}
    for item in text.split(","):
        name, sep, digest = item.rpartition(":")
        if sep and name.strip() and digest.strip():
            out[name.strip()] = digest.strip().lower()
    return out


def tag_name(path: str | os.PathLike) -> str:
    """The name a web UI gives the LoRA file ``path`` in a tag: its stem, without the characters the tag
    and the "Lora hashes" field use as separators (``:``, ``,``, ``<``, ``>``), as A1111 cleans its aliases."""
    return re.sub(r"[:,<>]", "", Path(path).name.removesuffix(LORA_SUFFIX)) or "lora"


def format_lora_tag(choice: LoraChoice) -> str:
    return f"<lora:{tag_name(choice.path)}:{choice.weight:g}>"


# -- hashes ------------------------------------------------------------------------------------------------
_HASHES: dict[tuple, str] = {}  # (resolved path, size, mtime ns) → AutoV3 hash, for this process


def autov3_hash(path: str | os.PathLike) -> str:
    """The full hex SHA-256 of a ``.safetensors`` file's bytes after its header (A1111's
    ``addnet_hash_safetensors``); cached per file version for this process. ``CheckpointError``: unreadable."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        header = read_header(p)  # validated: its length is the offset of the data
        h = hashlib.sha256()
        try:
            with open(p, "rb") as f:
                f.seek(8 + header.header_size)
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    cancel.check()
                    h.update(chunk)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def short_hash(path: str | os.PathLike) -> str:
    """What A1111 writes for this file in "Lora hashes": its ``sshs_model_hash`` metadata, else its AutoV3
    hash, cut to 12 hex digits."""
    given = read_header(path).metadata.get("sshs_model_hash")
    return (given or autov3_hash(path))[:SHORT_HASH].lower()


def matches_hash(path: Path, digest: str) -> bool:
    """Whether ``digest`` (a hash from an image, usually 12 hex digits) begins one of the hashes the web UIs
    give this file: its ``sshs_model_hash`` metadata, its AutoV3 hash or the SHA-256 of the whole file."""
    from studio.core.file_hashes import cached_sha256

    digest = digest.lower()
    if len(digest) < 8:  # too short to name a file
        return False
    candidates = (lambda: read_header(path).metadata.get("sshs_model_hash") or "", lambda: autov3_hash(path),
                  lambda: cached_sha256(path, CheckpointError))
    return any(full().lower().startswith(digest) for full in candidates)


def lora_hashes_field(choices: list[LoraChoice]) -> Optional[str]:
    """The "Lora hashes" value for a run's LoRAs (files that cannot be read are left out); None for none."""
    items = []
    for c in choices:
        try:
            items.append(f"{tag_name(c.path)}: {short_hash(Path(c.path).expanduser())}")
        except CheckpointError:
            continue
    return ", ".join(items) or None


# -- finding the files -----------------------------------------------------------------------------------------
def lora_folders(model: Optional[str]) -> list[Path]:
    """The folders a tag's LoRA is looked for in, for a model file or folder (none for a built-in model)."""
    if not model:
        return []
    path = Path(model).expanduser()
    if not path.exists():
        return []
    home = path.resolve().parent
    candidates = [home, *(home / s for s in SUBFOLDERS), home.parent / SUBFOLDERS[0]]
    out = []
    for c in candidates:
        if c.is_dir() and c not in out:
            out.append(c)
    return out


def find_lora(tag: LoraTag, folders: list[Path]) -> tuple[Optional[Path], Optional[str]]:
    """(the file of ``tag``, None) or (None, why it is not used): the first ``NAME.safetensors`` of
    ``folders`` whose hash matches the tag's (when it has one)."""
    mismatched = None
    for folder in folders:
        path = folder / (tag.name + LORA_SUFFIX)
        if not path.is_file():
            continue
        try:
            if tag.hash is None or matches_hash(path, tag.hash):
                return path, None
        except CheckpointError as e:
            return None, str(e)
        mismatched = path
    if mismatched is not None:
        return None, (f"the LoRA {tag.name!r} of this image has hash {tag.hash} but {mismatched} does not; it is "
                      "another version of the file: put the one the image was made with there")
    where = ", ".join(str(f) for f in folders) or "nowhere (the model is not a file or folder)"
    return None, (f"the LoRA {tag.name!r} of this image is not found (looked for {tag.name}{LORA_SUFFIX} in "
                  f"{where}); the image opens without it")


def resolve_lora_tags(tags: list[LoraTag], model: Optional[str], warnings: list[str]) -> list[str]:
    """The recipe's ``loras`` entries (``FILE:WEIGHT``) for the tags whose files are found next to ``model``;
    one warning line for each that is not."""
    folders = lora_folders(model)
    out = []
    for tag in tags:
        path, why = find_lora(tag, folders)
        if path is None:
            warnings.append(why)
        else:
            out.append(str(parse_lora(f"{path}:{tag.weight:g}")))
    return out
