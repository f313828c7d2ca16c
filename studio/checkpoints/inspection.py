"""What ``studio info FILE`` says about a single-file checkpoint, from its header alone.

Parameter counts are computed from the header's shapes (the product of each floating-point tensor's
dimensions; integer buffers such as CLIP's ``position_ids`` are not parameters), per component by
key prefix (families.py). The memory the weights take when loaded in a dtype counts the components
a pipeline loads (UNet, VAE, text encoders — not the EMA copy, not the training schedule buffers):
floating-point tensors at the dtype's element size, others as stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from studio.core.memory_check import human_bytes

from .families import (
    EMA_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    Detection,
    Family,
    detect_family,
)
from .header import CHECKPOINT_SUFFIXES, CheckpointHeader, TensorInfo, read_header
from .prediction import Prediction, choose_prediction

OTHER = "other"
EMA = "ema"
METADATA_SHOWN = 6  # metadata entries describe() lists
VALUE_SHOWN = 72  # characters of a metadata value describe() shows


@dataclass(frozen=True)
class Component:
    """The tensors of one component: ``name`` is diffusers' pipeline component name, or ``ema`` /
    ``other`` (tensors of no component: buffers, none of them parameters); ``dtypes`` are its
    parameters' dtypes; ``loaded`` says whether a pipeline loads it."""
    name: str
    title: str
    prefix: str
    tensors: int
    parameters: int
    dtypes: tuple[str, ...]
    stored_bytes: int
    loaded: bool


def _component_table(family: Family) -> list[tuple[str, str, str]]:
    """(prefix, component name, title) for the family's layout, most specific first."""
    table = [(UNET_PREFIX, "unet", "UNet"), (VAE_PREFIX, "vae", "VAE")]
    table += [(te.prefix, te.component, f"{te.title} text encoder") for te in family.text_encoders]
    table.append((EMA_PREFIX, EMA, "EMA copy of the UNet"))
    return table


BUFFERS = ("position_ids", EMA_PREFIX + "decay", EMA_PREFIX + "num_updates")  # saved buffers, not parameters


def _is_parameter(name: str, info: TensorInfo) -> bool:
    return info.is_floating and not name.endswith(BUFFERS)


def components_of(header: CheckpointHeader, family: Family) -> tuple[Component, ...]:
    """The header's tensors grouped into the family's components (absent components are left out)."""
    table = _component_table(family)
    groups: dict[str, list[tuple[str, TensorInfo]]] = {}
    for name, info in header.tensors.items():
        owner = next((comp for prefix, comp, _ in table if name.startswith(prefix)), OTHER)
        groups.setdefault(owner, []).append((name, info))
    titles = {comp: title for _, comp, title in table}
    titles[OTHER] = "other (schedule buffers, markers)"
    prefixes = {comp: prefix for prefix, comp, _ in table}
    out = []
    for comp in [c for _, c, _ in table] + [OTHER]:
        members = groups.get(comp)
        if not members:
            continue
        params = [(name, info) for name, info in members if comp != OTHER and _is_parameter(name, info)]
        out.append(Component(
            comp, titles[comp], prefixes.get(comp, ""), len(members), sum(info.numel for _, info in params),
            tuple(sorted({info.dtype for _, info in (params or members)})),
            sum(info.nbytes for _, info in members), comp not in (EMA, OTHER)))
    return tuple(out)


@dataclass(frozen=True)
class CheckpointInfo:
    """A single-file checkpoint as its header describes it: family, evidence, prediction, components."""
    header: CheckpointHeader
    detection: Detection
    prediction: Prediction
    components: tuple[Component, ...]

    @property
    def path(self) -> Path:
        return self.header.path

    @property
    def family(self) -> Family:
        return self.detection.family

    @property
    def has_ema(self) -> bool:
        return any(c.name == EMA for c in self.components)

    @property
    def missing(self) -> tuple[str, ...]:
        """Pipeline components the family needs and the file lacks (``vae``, ``text_encoder``, …)."""
        return self.detection.missing

    @property
    def native_size(self) -> int:
        return self.family.native_size(self.prediction.prediction_type)

    def component(self, name: str) -> Optional[Component]:
        return next((c for c in self.components if c.name == name), None)

    def weights_bytes(self, dtype: Optional[torch.dtype] = None) -> int:
        """Bytes of the loaded components' weights in ``dtype`` (None: as stored in the file)."""
        item = torch.empty((), dtype=dtype).element_size() if dtype is not None else None
        loaded = tuple(c.prefix for c in self.components if c.loaded)
        total = 0
        for name, info in self.header.tensors.items():
            if name.startswith(loaded):
                total += info.numel * item if item is not None and info.is_floating else info.nbytes
        return total

    def describe(self) -> str:
        """The text of ``studio info FILE``."""
        fam, det, pred, head = self.family, self.detection, self.prediction, self.header
        size = self.native_size
        lines = [_printable(str(self.path)),
                 (f"  family: {fam.title} ({fam.pipeline}, {size}x{size}); diffusers' own detection: "
                  f"{det.diffusers_type or 'none'}"),
                 "  detected from:"]
        lines += [f"    {_printable(str(e))}" for e in det.evidence]
        snr = "; zero terminal SNR (its ztsnr marker)" if pred.zero_terminal_snr else ""
        lines.append(f"  prediction: {pred.prediction_type}, from {pred.source}{snr}")
        header_part = f", header {human_bytes(head.header_size)}" if head.format == "safetensors" else ""
        lines.append(f"  file: {head.format}, {human_bytes(head.file_size)}{header_part}, {len(head.tensors):,} tensors")
        lines.append("  components:")
        width = max(len(c.title) for c in self.components)
        for c in self.components:
            params = f"{c.parameters:>15,} parameters" if c.name != OTHER else " " * 26
            lines.append(f"    {c.title:<{width}}  {params}  {'/'.join(c.dtypes):<8} "
                         f"{human_bytes(c.stored_bytes):>9}  ({c.tensors:,} tensors)")
        lines.append(f"  missing: {', '.join(self.missing)}" if self.missing else "  missing: nothing")
        ema = self.component(EMA)
        lines.append(f"  EMA weights: present ({ema.tensors:,} tensors under {EMA_PREFIX}*)" if ema else
                     "  EMA weights: none")
        per_dtype = ", ".join(f"{human_bytes(self.weights_bytes(d))} in {str(d).replace('torch.', '')}"
                              for d in (torch.float32, torch.float16))
        lines.append(f"  weights to load: {human_bytes(self.weights_bytes())} as stored; {per_dtype}")
        if head.metadata:
            lines.append(f"  metadata ({len(head.metadata)} entries):")
            for key in sorted(head.metadata)[:METADATA_SHOWN]:
                value = _printable(head.metadata[key])
                value = value if len(value) <= VALUE_SHOWN else value[:VALUE_SHOWN - 1] + "…"
                lines.append(f"    {_printable(key)}: {value}")
            if len(head.metadata) > METADATA_SHOWN:
                lines.append(f"    … and {len(head.metadata) - METADATA_SHOWN} more")
        return "\n".join(lines)


def _printable(text: str) -> str:
    """``text`` with control characters escaped, so a file's names cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def is_single_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file with a single-file checkpoint suffix (vs a model folder or a built-in)."""
    p = Path(path)
    return p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file()


def inspect_checkpoint(path: str | os.PathLike, allow_pickle: bool = False,
                       prediction_type: Optional[str] = None) -> CheckpointInfo:
    """Read ``path``'s header, detect its family and prediction type, and count its components.

    Never loads the weights. Raises ``CheckpointError`` (``UnsupportedCheckpoint`` for a readable
    file the studio does not run) with a one-line message naming the file."""
    header = read_header(path, allow_pickle=allow_pickle)
    detection = detect_family(header)
    prediction = choose_prediction(header, detection.family, prediction_type)
    return CheckpointInfo(header, detection, prediction, components_of(header, detection.family))
