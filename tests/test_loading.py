"""Opening models and refusing bad inputs: ``load_model``, ``Recipe.validate``, ``engine.sample``."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from _models import make_unet, save_model_folder
from studio.core import engine
from studio.core.gmm import GaussianMixtureModel
from studio.core.guidance import Guidance, GuidanceError
from studio.core.loading import WEIGHT_NAME, ModelLoadError, load_model
from studio.core.options import OptionError
from studio.core.records import SamplingError
from studio.core.schedule import ScheduleError
from studio.session.recipe import Recipe, RecipeError

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

SCHED = dict(clip_sample=False, prediction_type="epsilon")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return make_unet().eval()


@pytest.fixture
def folder(unet, tmp_path):
    return save_model_folder(unet, tmp_path / "m", SCHED)


def _load_error(path, *names, **kw) -> str:
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(path), device="cpu", **kw)
    msg = str(ei.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    for n in names:
        assert n in msg, f"{n!r} not named in {msg!r}"
    return msg


@torch.no_grad()
def _same_outputs(model, unet):
    """Bit-identical weights, and the same predictions up to float rounding (the loaded model runs
    channels-last on CPU, whose convolutions round differently from NCHW ones)."""
    ref = unet.state_dict()
    got = model.unet.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10.0, 700.0])
    torch.testing.assert_close(model.predict(x, t, None, 1.0), unet(x, t).sample, rtol=0, atol=2e-5)


def test_cpu_model_runs_channels_last_with_nchw_results(folder, unet):
    """The CPU speed-up changes the memory layout only: weights and inputs channels-last, outputs
    equal to the NCHW network's within float rounding, whatever layout the caller passes."""
    m = load_model(str(folder), device="cpu")
    conv = next(p for p in m.unet.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1.0, 400.0, 999.0])
    with torch.no_grad():
        want = unet(x, t).sample
        for layout in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, :]):
            torch.testing.assert_close(m.predict(layout, t, None, 1.0), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loaded_unet_reads_its_dtype_without_searching_its_modules(folder, unet, monkeypatch, dtype):
    """diffusers' ModelMixin.dtype walks every submodule; the studio's network answers from a stored
    value (same class name, still a UNet2DModel), and its forward never runs the search."""
    from diffusers import UNet2DModel
    from diffusers.models import modeling_utils

    m = load_model(str(folder), device="cpu", dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype])
    assert isinstance(m.unet, UNet2DModel) and type(m.unet).__name__ == "UNet2DModel"
    assert m.unet.dtype == dtype == next(m.unet.parameters()).dtype
    calls = []
    real = modeling_utils.get_parameter_dtype
    monkeypatch.setattr(modeling_utils, "get_parameter_dtype", lambda mod: calls.append(mod) or real(mod))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = m.predict(x.to(dtype), torch.tensor([10.0, 700.0]), None, 1.0)
    assert out.dtype == dtype and calls == []
    assert unet.dtype == torch.float32  # the search still works on a network the studio did not load
    assert len(calls) == 1


def test_flat_folder_loads_with_identical_weights(folder, unet):
    m = load_model(str(folder), device="cpu")
    assert m.info.sample_size == 8 and m.info.in_channels == 3 and not m.info.conditional
    assert m.info.null_label is None and m.info.prediction_type == "epsilon"
    _same_outputs(m, unet)


def test_unconditional_model_takes_no_label(folder):
    m = load_model(str(folder), device="cpu")
    with pytest.raises(ValueError, match="unconditional"):
        engine.sample(m, "ddim", 3, label=0)
    with pytest.raises(ValueError, match="null class|classifier-free"):
        engine.sample(m, "ddim", 3, label=None, guidance=Guidance("cfg", 2.0))


def test_pipeline_layout_loads(unet, tmp_path):
    f = save_model_folder(unet, tmp_path / "pipe", dict(clip_sample=True, prediction_type="v_prediction"),
                          layout="pipeline")
    assert (f / "unet" / "config.json").exists() and (f / "scheduler" / "scheduler_config.json").exists()
    assert not (f / "config.json").exists()
    m = load_model(str(f), device="cpu")
    assert m.info.prediction_type == "v_prediction" and engine.default_x0_mode(m) == "clip"
    _same_outputs(m, unet)


def test_class_conditional_folder_gets_null_label(tmp_path):
    torch.manual_seed(1)
    u = make_unet(num_class_embeds=4).eval()
    f = save_model_folder(u, tmp_path / "cond", SCHED, class_names=["cat", "dog", "owl"])
    m = load_model(str(f), device="cpu")
    assert m.info.num_classes == 3 and m.info.null_label == 3 and m.info.class_names == ["cat", "dog", "owl"]
    # the unconditional pass feeds the null label; label 0 gives a different output
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        torch.testing.assert_close(m.predict(x, t, torch.tensor([3, 3]), 1.0), u(x, t, class_labels=torch.tensor([3, 3])).sample)
    with pytest.raises(ValueError, match="out of range"):
        engine.sample(m, "ddim", 3, label=3, batch=1)  # the null class is not a user label


def test_recommended_scales_are_read_and_checked(folder):
    assert load_model(str(folder), device="cpu").info.recommended_scales == {}
    (folder / "recommended.json").write_text('{"cfg_scale": 4, "classifier_scale": 50.5, "note": "x"}')
    info = load_model(str(folder), device="cpu").info
    assert info.recommended_scales == {"cfg": 4.0, "classifier": 50.5}
    assert "cfg scale 4, classifier scale 50.5" in info.describe()
    for bad in ('{"cfg_scale": -1}', '{"classifier_scale": "big"}', '{"cfg_scale": true}', "[3]"):
        (folder / "recommended.json").write_text(bad)
        msg = _load_error(folder)
        assert "recommended.json" in msg and "\n" not in msg, msg


def test_shipped_model_recommends_the_card_scales():
    import json

    from studio.core.loading import DEFAULT_MODEL_DIR

    card = json.loads((DEFAULT_MODEL_DIR / "recommended.json").read_text())
    info = load_model("default", device="cpu").info
    assert info.recommended_scales == {"cfg": card["cfg_scale"], "classifier": card["classifier_scale"]}


def test_pickled_bin_refused_unless_allowed(unet, tmp_path):
    f = save_model_folder(unet, tmp_path / "pkl", SCHED)
    (f / WEIGHT_NAME).unlink()
    torch.save(unet.state_dict(), f / "diffusion_pytorch_model.bin")
    msg = _load_error(f, "diffusion_pytorch_model.bin")
    assert "safetensors" in msg
    m = load_model(str(f), device="cpu", allow_pickle=True)
    _same_outputs(m, unet)


class _Payload:  # any non-tensor object in a pickle: weights_only must refuse to build it
    def __reduce__(self):
        return (print, ("this must never run",))


def test_allow_pickle_still_uses_weights_only(unet, tmp_path, capsys):
    f = save_model_folder(unet, tmp_path / "evil", SCHED)
    (f / WEIGHT_NAME).unlink()
    sd = dict(unet.state_dict())
    sd["extra"] = _Payload()
    torch.save(sd, f / "diffusion_pytorch_model.bin")
    _load_error(f, "diffusion_pytorch_model.bin", allow_pickle=True)
    assert "this must never run" not in capsys.readouterr().out


def test_truncated_safetensors(folder):
    w = folder / WEIGHT_NAME
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    _load_error(folder, WEIGHT_NAME)


def test_garbage_safetensors(folder):
    (folder / WEIGHT_NAME).write_bytes(b"\x00" * 7)
    _load_error(folder, WEIGHT_NAME)


def test_key_mismatch(folder):
    w = folder / WEIGHT_NAME
    sd = load_file(str(w))
    k = next(iter(sd))
    sd["renamed." + k] = sd.pop(k)
    save_file(sd, str(w))
    msg = _load_error(folder, WEIGHT_NAME)
    assert k in msg or "renamed." + k in msg


def test_shape_mismatch(folder):
    w = folder / WEIGHT_NAME
    sd = load_file(str(w))
    k = "conv_in.weight"
    sd[k] = torch.zeros(sd[k].shape[0] + 1, *sd[k].shape[1:])
    save_file(sd, str(w))
    _load_error(folder, WEIGHT_NAME, k)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(folder, bad):
    w = folder / WEIGHT_NAME
    sd = load_file(str(w))
    sd["conv_out.bias"][0] = bad
    save_file(sd, str(w))
    _load_error(folder, WEIGHT_NAME, "conv_out.bias")


def test_missing_config(folder):
    (folder / "config.json").unlink()
    _load_error(folder, "config.json", str(folder))


@pytest.mark.parametrize("text", ['{"sample_size": 8,', "[1, 2]", "\xff\xfe"])
def test_malformed_config(folder, text):
    (folder / "config.json").write_text(text, encoding="latin-1")
    _load_error(folder, "config.json")


def test_malformed_scheduler_config(folder):
    (folder / "scheduler_config.json").write_text("{not json")
    _load_error(folder, "scheduler_config.json")


def test_wrong_sha256sums(folder):
    digest = hashlib.sha256((folder / WEIGHT_NAME).read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{digest}  {WEIGHT_NAME}\n")
    load_model(str(folder), device="cpu")  # the right sum passes
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  {WEIGHT_NAME}\n")
    _load_error(folder, WEIGHT_NAME, "SHA")


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    _load_error(tmp_path / "nope", "nope")
    f = tmp_path / "file.safetensors"
    f.write_bytes(b"x")
    _load_error(f, "file.safetensors")


def test_unknown_device_and_dtype():
    with pytest.raises(ModelLoadError, match="device"):
        load_model("gmm", device="tpu")
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("gmm", device="cpu", dtype="float64")
    assert isinstance(load_model("gmm", device="cpu"), GaussianMixtureModel)


# -- refusing bad run settings up front ---------------------------------------------------
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0, -1e-9])
def test_bad_scale_refused(gmm, scale):
    with pytest.raises(RecipeError):
        Recipe(model="gmm", guidance="cfg", label=0, scale=scale).validate()
    with pytest.raises(GuidanceError):
        engine.sample(gmm, "ddim", 4, label=0, guidance=Guidance("cfg", scale))


@pytest.mark.parametrize("changes,match", [
    (dict(sampler="plms"), "sampler"), (dict(spacing="karras"), "spacing"), (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"), (dict(eta=1.5), "eta"), (dict(eta=float("nan")), "eta"), (dict(batch=0), "batch"),
    (dict(label=-1), "label"), (dict(guidance="cfg"), "label"), (dict(x0_mode="squash"), "x0"),
    (dict(seed=-1), "seed"), (dict(variance="learned"), "variance"),
])
def test_recipe_validate_refuses(changes, match):
    with pytest.raises(RecipeError, match=match):
        Recipe(model="gmm", **changes).validate()


def test_recipe_round_trip_and_unknown_keys():
    r = Recipe(model="gmm", sampler="heun", steps=12, guidance="cfg", scale=2.0, label=1, guidance_interval=(0.2, 0.8))
    assert Recipe.from_json(r.to_json()) == r
    d = r.to_dict()
    d["colour"] = "blue"
    with pytest.raises(RecipeError, match="colour"):
        Recipe.from_dict(d)
    with pytest.raises(RecipeError):
        Recipe.from_json("{not json")


def test_engine_refuses_bad_settings(gmm):
    with pytest.raises(ValueError, match="sampler"):
        engine.sample(gmm, "plms", 4)
    with pytest.raises(ScheduleError, match="spacing"):
        engine.sample(gmm, "ddim", 4, spacing="karras")
    with pytest.raises(ScheduleError):
        engine.sample(gmm, "ddim", 0)
    for label in (4, -1, 99):  # 4 is the null class, not a user label
        with pytest.raises(ValueError, match="out of range"):
            engine.sample(gmm, "ddim", 4, label=label)
    with pytest.raises(ValueError, match="batch"):
        engine.sample(gmm, "ddim", 4, batch=0)
    with pytest.raises(ValueError, match="shape"):
        engine.sample(gmm, "ddim", 4, batch=2, init_noise=torch.zeros(3, 3, 16, 16))
    with pytest.raises(ValueError, match="seed"):
        engine.sample(gmm, "ddim", 4, seed=-5)
    with pytest.raises(OptionError, match="eta must be a number from 0 to 1, got 2.0"):
        engine.sample(gmm, "ddim", 4, options={"eta": 2.0})  # refused by the call, before a step runs
    with pytest.raises(OptionError, match="ddim has no option 'snr'"):
        engine.sample(gmm, "ddim", 4, options={"snr": 0.1})


class _NaNFromStep3(GaussianMixtureModel):
    """The exact mixture, except that its prediction is NaN from the 3rd evaluation on."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def predict(self, x, t, labels, sigma):
        self.calls += 1
        out = super().predict(x, t, labels, sigma)
        return out * math.nan if self.calls >= 3 else out


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m", "ddpm"])
def test_nan_chain_raises_sampling_error_naming_the_step(sampler):
    m = _NaNFromStep3()
    done = []
    with pytest.raises(SamplingError, match=r"step 3\b") as ei:
        for rec in engine.sample(m, sampler, 6, batch=2):
            done.append(rec.index)
    assert done == [0, 1]
    assert "\n" not in str(ei.value)
