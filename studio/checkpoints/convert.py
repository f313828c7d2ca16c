"""Writing a single-file checkpoint as a diffusers pipeline folder (``studio convert FILE --out FOLDER``).

The pipeline diffusers' single-file loader made (loading.py) is written with its own
``save_pretrained(safe_serialization=True)``: ``model_index.json``, each component's config and
safetensors weights, the tokenizer files and the scheduler config with the prediction type chosen,
so the folder opens again anywhere, with diffusers or the studio, with nothing fetched. A
``SHA256SUMS`` lists every weight file (``sha256sum`` format, as ``assets/models/*/SHA256SUMS``),
which the studio checks each time it opens the folder.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from studio.core.file_hashes import sha256_file
from studio.core.loading import ModelLoadError

from .configs import TOKENIZER_FOLDERS
from .inspection import CheckpointInfo
from .loading import open_pipeline

STORED_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
SUMS_NAME = "SHA256SUMS"


def stored_dtype(info: CheckpointInfo) -> torch.dtype:
    """The dtype the file stores its UNet in (float32 for any other)."""
    counts = Counter(t.dtype for name, t in info.header.tensors.items() if name.startswith(info.component("unet").prefix))
    return STORED_DTYPES.get(counts.most_common(1)[0][0], torch.float32) if counts else torch.float32


def write_sha256sums(folder: Path) -> Path:
    """``SHA256SUMS`` of every ``*.safetensors`` under ``folder``, sorted by path."""
    folder = Path(folder)
    lines = [f"{sha256_file(p, ModelLoadError)}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*.safetensors"))]
    out = folder / SUMS_NAME
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def load_for_conversion(path: str | os.PathLike, dtype: Optional[torch.dtype] = None, allow_pickle: bool = False,
                        prediction_type: Optional[str] = None, config_root: Optional[Path] = None):
    """(info, config folder, pipeline) of the checkpoint, in ``dtype`` (None: as the file stores it)."""
    from .loading import inspect_for_loading

    if dtype is None:
        dtype = stored_dtype(inspect_for_loading(path, allow_pickle, prediction_type))
    return open_pipeline(path, dtype, allow_pickle, prediction_type, config_root=config_root)


def save_folder(pipe, folder: Path, configs: Path) -> Path:
    """Write ``pipe`` into the (new, empty) ``folder`` as safetensors, with ``SHA256SUMS``; each tokenizer
    folder also gets the ``vocab.json``/``merges.txt`` of ``configs`` (the folder it was loaded with), which
    transformers' slow CLIP tokenizer reads where newer versions save only ``tokenizer.json``."""
    from studio.core.text_model import quiet_libraries

    folder = Path(folder)
    with quiet_libraries():
        pipe.save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FOLDERS:
        for file in ("vocab.json", "merges.txt"):
            if (folder / name).is_dir() and (configs / name / file).is_file() and not (folder / name / file).exists():
                shutil.copyfile(configs / name / file, folder / name / file)
    write_sha256sums(folder)
    return folder
