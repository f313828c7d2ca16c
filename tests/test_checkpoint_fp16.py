"""An fp16 single file opened with ``--dtype float16`` never holds its weights in float32.

The check watches every tensor torch creates while the file loads (a ``TorchDispatchMode`` sees each
aten operation, factory functions and dtype conversions included) and keeps a weak reference to the
storage of each float32 tensor on a real device (meta tensors, from which diffusers builds networks
empty, hold no memory). After each operation it adds up the float32 storages still alive: the peak is
the most float32 memory the load ever held at once. A float32 detour (networks built in float32 and
then cast, or weights cast up and back) holds a whole network in float32. Building a network empty
holds at most one parameter for an instant (accelerate's ``init_empty_weights`` moves each to the meta
device as it is registered; ``torch.empty`` leaves its pages untouched), besides the scheduler's small
ᾱ tables. The detector is itself checked: diffusers' loader with ``low_cpu_mem_usage=False`` builds the
networks in float32 first, and the peak shows it.

The one float32 copy the studio keeps on purpose is the VAE (it decodes in float32: fp16 VAEs overflow),
made when the model is assembled, so a whole open may hold the VAE's parameters in float32 and no more.
"""
from __future__ import annotations

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from checkpoint_files import make_tiny_checkpoint
from studio.checkpoints.loading import open_checkpoint, open_pipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]
TABLES = 1 << 16  # float32 elements allowed besides: the scheduler's tables (a few × 1000 timesteps)


class Float32Peak(TorchDispatchMode):
    """The most float32 elements alive at once in storages that operations returned on a real device."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device.type != "meta":
                storage = t.untyped_storage()
                self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes() // 4)
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


def parameters(*modules) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


@pytest.fixture(scope="module")
def half_file(tmp_path_factory):
    _, path, configs = make_tiny_checkpoint("sd1", tmp_path_factory.mktemp("fp16"), dtype=torch.float16)
    return path, configs


def test_the_loader_builds_fp16_weights_without_a_float32_copy(half_file):
    path, configs = half_file
    with Float32Peak() as seen:
        _, _, pipe = open_pipeline(path, torch.float16, config_root=configs)
    weights = parameters(pipe.unet, pipe.vae, pipe.text_encoder)
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {torch.float16}
    largest = max(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    assert seen.peak <= largest + TABLES < weights / 4, (seen.peak, largest, weights)


def test_the_detector_sees_a_float32_detour(half_file):
    """diffusers' own loader, told not to build the networks empty: they are made in float32 and cast."""
    from diffusers import StableDiffusionPipeline

    path, configs = half_file
    with Float32Peak() as seen:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(configs / "sd1"), local_files_only=True, torch_dtype=torch.float16,
            low_cpu_mem_usage=False, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    assert seen.peak > parameters(pipe.unet), seen.peak  # a whole network in float32 at once


def test_the_opened_model_keeps_only_its_vae_in_float32(half_file):
    path, configs = half_file
    with Float32Peak() as seen:
        model = open_checkpoint(path, dtype=torch.float16, config_root=configs)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in model.text_encoders[0].parameters()} == {torch.float16}
    vae = parameters(model.vae)
    largest = max(p.numel() for m in (model.unet, *model.text_encoders) for p in m.parameters())
    assert vae <= seen.peak <= vae + largest + TABLES, (seen.peak, vae, largest)
