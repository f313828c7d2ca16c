"""Which weights a recipe was made with, so that replaying it against other weights is noticed.

A recipe names its model by path (or ``default``), but the files there can change: retrained,
fine-tuned, replaced by a download of another version. Every recipe the studio writes records, in
its ``versions`` block, the SHA-256 of each weight file of the model folder (and of an explicit
classifier folder): ``"weights": {"diffusion_pytorch_model.safetensors": "<hex>", …}``; for a
single-file checkpoint, of the file and of the sidecar config beside it (``{"model.safetensors":
"<hex>", "model.yaml": "<hex>"}``); of each LoRA file and a ``--vae`` file (``"lora:NAME"``,
``"vae:NAME"``). An image-to-image run's recipe records its image's SHA-256 itself
(``init_image_sha256``, from ``image_sha256``): a replay with another image is refused, not warned. Digests
are computed once per file version and cached (core/file_hashes.py), so this costs a ``stat`` per
file after the first time. When a recipe is replayed, ``weights_warning`` compares the recorded
digests with the current ones and returns one line naming what changed; the studio shows it as a
warning (the run still happens: the user may want exactly that comparison).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..core import file_hashes
from ..core.file_reading import FileReadError
from ..core.loading import DEFAULT_MODEL_DIR, TEXT_MODEL_DIR, TEXT_MODEL_NAME

WEIGHTS_KEY = "weights"


def model_folder(spec: Optional[str]) -> Optional[Path]:
    """The folder a model spec opens (None for the closed-form ``gmm``)."""
    if not spec or spec == "gmm":
        return None
    if spec == "default":
        return DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "config.json").exists() else None
    if spec == TEXT_MODEL_NAME:
        return TEXT_MODEL_DIR if TEXT_MODEL_DIR.is_dir() else None
    p = Path(spec).expanduser()
    return p if p.is_dir() else None


def checkpoint_files(spec: Optional[str]) -> list[Path]:
    """A single-file checkpoint and the sidecar config beside it that decides its prediction type
    (studio/checkpoints/prediction.py); [] when ``spec`` is not a file."""
    from ..checkpoints.models import is_checkpoint_spec
    from ..checkpoints.prediction import sidecar_of

    if not is_checkpoint_spec(spec):
        return []
    path = Path(spec).expanduser()
    sidecar = sidecar_of(path)
    return [path] + ([sidecar] if sidecar is not None else [])


def added_files(loras=(), vae: Optional[str] = None) -> dict[str, str]:
    """{"lora:NAME" | "vae:NAME": SHA-256} of a recipe's LoRA files and VAE (a folder's weight files as
    ``vae:FOLDER/FILE``); files that cannot be read are left out (the run itself reports them)."""
    from ..checkpoints.lora_files import parse_lora

    out: dict[str, str] = {}
    named = [("lora", Path(parse_lora(e).path).expanduser()) for e in loras]
    named += [("vae", Path(vae).expanduser())] if vae else []
    for kind, path in named:
        try:
            if path.is_dir():
                out.update({f"{kind}:{path.name}/{k}": v for k, v in file_hashes.folder_fingerprint(path).items()})
            else:
                out[f"{kind}:{path.name}"] = file_hashes.cached_sha256(path)
        except (FileReadError, OSError, ValueError):
            continue
    return out


def weights_fingerprint(model: Optional[str], classifier: Optional[str] = None, loras=(),
                        vae: Optional[str] = None) -> dict[str, str]:
    """{file: SHA-256} of the weights a recipe with this model (and classifier, LoRAs, VAE) uses; {} when
    unknown. A single-file checkpoint records its file name (and its sidecar config's)."""
    out: dict[str, str] = added_files(loras, vae)
    try:
        out.update({p.name: file_hashes.cached_sha256(p) for p in checkpoint_files(model)})
    except (FileReadError, OSError):
        pass  # unreadable weights: the load itself reports that
    for prefix, spec in (("", model), ("classifier:", classifier)):
        folder = model_folder(spec) if prefix == "" else (Path(spec).expanduser() if spec else None)
        if folder is None or not folder.is_dir():
            continue
        try:
            out.update({prefix + k: v for k, v in file_hashes.folder_fingerprint(folder).items()})
        except (FileReadError, OSError):
            continue  # unreadable weights: the load itself reports that
    return out


def image_sha256(path) -> str:
    """The SHA-256 of an image a run starts from (image-to-image), which its recipe records
    (``init_image_sha256``) so a replay uses the same image; read in full each time (images are small, and
    the digest cache is kept for weights)."""
    return file_hashes.sha256_file(Path(path).expanduser())


def recipe_document(recipe, fingerprint: Optional[dict] = None) -> dict:
    """The recipe as written to files: ``recipe.to_dict()`` with the weights' fingerprint in ``versions``."""
    d = recipe.to_dict()
    fp = weights_fingerprint(recipe.model, recipe.classifier, recipe.loras, recipe.vae) if fingerprint is None \
        else fingerprint
    if fp:
        d.setdefault("versions", {})[WEIGHTS_KEY] = fp
    return d


def recipe_json(recipe, fingerprint: Optional[dict] = None) -> str:
    return json.dumps(recipe_document(recipe, fingerprint), indent=2)


def recorded_weights(document: dict) -> Optional[dict]:
    """The fingerprint a recipe document recorded, or None (older recipes, gmm)."""
    versions = document.get("versions") if isinstance(document, dict) else None
    fp = versions.get(WEIGHTS_KEY) if isinstance(versions, dict) else None
    if isinstance(fp, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in fp.items()):
        return fp
    return None


def weights_warning(recorded: Optional[dict], current: dict) -> Optional[str]:
    """One line when the weights differ from those a recipe recorded; None when they match or it recorded none."""
    if not recorded:
        return None
    change = file_hashes.fingerprint_changes(recorded, current)
    if change is None:
        return None
    return (f"the model's weights are not the ones this recipe was made with ({change}); "
            "the images will differ from the original run")
