"""Damaged weights are named when they first make an output NaN, not by a pass over every weight at open.

A tiny SD 1.x-like checkpoint (checkpoint_files.py) is written with one NaN placed where only some
work reaches it: a text encoder's embedding row of a token that one prompt uses and another does not,
and a VAE decoder weight. The checkpoint opens; the run that reaches the NaN stops with one line that
names the file and the weight; the run that does not reach it is unaffected.
"""
from __future__ import annotations

import pytest
import torch

from checkpoint_files import make_tiny_checkpoint, original_state_dict, write_checkpoint
from studio.checkpoints.loading import open_checkpoint
from studio.core import engine
from studio.core.records import SamplingError
from studio.core.weight_health import DamagedWeights, NonFiniteGuard, first_non_finite, is_finite

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")]

SIZE = 16
CLEAN, REACHING = "a red seven", "a red seven on blue"
EMBEDDING = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("health")
    pipe, path, configs = make_tiny_checkpoint("sd1", root)
    return pipe, configs, root


def sample(model, prompt: str):
    last = None
    for last in engine.sample(model, "ddim", 2, batch=1, prompt=prompt, size=(SIZE, SIZE)):
        pass
    return last


def only_in_reaching_prompt(pipe) -> int:
    tok = pipe.tokenizer
    ids = lambda text: set(tok(text, padding="max_length", max_length=tok.model_max_length).input_ids)  # noqa: E731
    extra = sorted(ids(REACHING) - ids(CLEAN))
    assert extra, "the two prompts must differ in a token"
    return extra[0]


def test_a_nan_embedding_row_is_named_by_the_prompt_that_uses_it(tiny):
    pipe, configs, root = tiny
    state = original_state_dict("sd1", pipe)
    state[EMBEDDING][only_in_reaching_prompt(pipe)] = float("nan")
    path = write_checkpoint(root / "nan-row.safetensors", state)
    model = open_checkpoint(path, config_root=configs)  # opens: no pass over the weights
    assert torch.isfinite(sample(model, CLEAN).x).all()
    with pytest.raises(DamagedWeights) as e:
        sample(model, REACHING)
    message = str(e.value)
    assert message.startswith(f"{path}: weight text_encoder.") and "token_embedding.weight holds NaN" in message
    assert "\n" not in message and isinstance(e.value, SamplingError)  # the CLI, window and sweeps catch it


def test_a_nan_vae_weight_is_named_at_the_decode(tiny):
    pipe, configs, root = tiny
    state = original_state_dict("sd1", pipe)
    key = "first_stage_model.decoder.conv_out.bias"
    state[key][0] = float("inf")
    path = write_checkpoint(root / "nan-vae.safetensors", state)
    model = open_checkpoint(path, config_root=configs)
    x = sample(model, CLEAN).x  # the chain itself never touches the VAE
    assert torch.isfinite(x).all()
    with pytest.raises(DamagedWeights, match=r"weight vae\.decoder\.conv_out\.bias holds NaN or infinite values"):
        model.decode(x)


def test_a_non_finite_output_from_clean_weights_is_left_to_the_chain():
    """fp16 overflow or an extreme guidance scale: every weight is finite, so the guard names none and the
    output passes through for the chain's own message."""
    clean = torch.nn.Linear(3, 3)
    guard = NonFiniteGuard("model.safetensors", lambda: [("unet", clean)])
    out = torch.tensor([1.0, float("nan")])
    assert guard.check(out) is out and guard.damaged is None
    with torch.no_grad():
        clean.weight[1, 2] = float("-inf")
    with pytest.raises(DamagedWeights, match=r"^model\.safetensors: weight unet\.weight holds NaN"):
        guard.check(out)
    finite = torch.ones(2)
    assert guard.check(finite) is finite  # a finite output is never refused


def test_finite_checks_agree_with_torch():
    g = torch.Generator().manual_seed(0)
    for value in (float("nan"), float("inf"), float("-inf"), 3e38):
        t = torch.randn(1000, generator=g)
        t[777] = value
        assert is_finite(t) == bool(torch.isfinite(t).all())
    assert is_finite(torch.empty(0))
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert first_non_finite([("net", m)]) is None
    with torch.no_grad():
        m[1].bias[0] = float("nan")
    assert first_non_finite([("net", m)]) == "net.1.bias"


def test_a_sweep_cell_on_damaged_weights_is_fatal(tiny, monkeypatch):
    """Every cell of a damaged model would fail the same way, so the worker marks the error fatal and the
    driver stops the sweep with the one line (a NaN from a guidance scale only fails its own cell)."""
    from studio.checkpoints import configs as configs_module
    from studio.session.recipe import Recipe
    from studio.sweep.worker import CellWorker

    pipe, configs, root = tiny
    monkeypatch.setattr(configs_module, "CONFIG_ROOT", configs)
    state = original_state_dict("sd1", pipe)
    state["model.diffusion_model.out.2.bias"][0] = float("nan")
    path = write_checkpoint(root / "nan-sweep.safetensors", state)
    worker = CellWorker({"model": str(path), "device": "cpu", "metrics": [], "reference_steps": 2})
    assert worker.load_error is None  # opens: nothing scans the weights at open
    recipe = Recipe(model=str(path), sampler="ddim", steps=2, batch=1, prompt=CLEAN, width=SIZE, height=SIZE,
                    device="cpu")
    out = worker.run("cell-0", recipe.to_dict())
    assert out["status"] == "error" and out["fatal"] is True
    assert out["error"] == f"{path}: weight unet.conv_out.bias holds NaN or infinite values; the file is damaged, " \
                           "download it again"
