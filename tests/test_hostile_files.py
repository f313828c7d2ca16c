"""Hostile model folders and input files: nothing hangs, nothing exhausts memory, every refusal is one line.

Each class of attack is tried with real files made here: links to endless devices, FIFOs,
``SHA256SUMS`` entries escaping the folder, oversized configs, configs asking for impossible
networks, schedules and class-name files of the wrong shape, mismatched classifiers and broken
``.npy`` noise. Anything that could block is run in a thread with a deadline, so a regression
fails the test instead of hanging the suite.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import pytest
import torch

from _models import make_unet, save_model_folder
from studio.core.file_reading import FileReadError, inside_folder, read_json, read_limited
from studio.core.loading import WEIGHT_NAME, ModelLoadError, load_model
from studio.core.memory_check import check_fits, human_bytes

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

SCHED = dict(clip_sample=False, prediction_type="epsilon")
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def unet():
    return make_unet().eval()


@pytest.fixture
def folder(unet, tmp_path):
    return save_model_folder(unet, tmp_path / "m", SCHED)


def within(seconds: float, fn, *args, **kw):
    """Run ``fn`` in a daemon thread; fail (instead of hanging) if it has not returned in time."""
    box = {}

    def body():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"{getattr(fn, '__name__', fn)} did not return within {seconds} s (it hangs)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def load_error(path, *names, **kw) -> str:
    with pytest.raises(ModelLoadError) as ei:
        within(60, load_model, str(path), device="cpu", **kw)
    msg = str(ei.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    for n in names:
        assert n in msg, f"{n!r} not named in {msg!r}"
    return msg


# -- SHA256SUMS ------------------------------------------------------------------------------------
@posix_only
def test_sha256sums_entries_must_be_regular_files_inside_the_folder(folder, tmp_path):
    weights = folder / WEIGHT_NAME
    good = hashlib.sha256(weights.read_bytes()).hexdigest()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    os.symlink("/dev/zero", folder / "zero.safetensors")
    os.mkfifo(folder / "pipe")
    os.symlink(outside, folder / "link-out")
    cases = {
        "../../dev/zero": "outside the folder",
        "/dev/zero": "absolute path",
        "zero.safetensors": "outside the folder",  # a link inside the folder to a device
        "pipe": "pipe (FIFO)",
        "link-out": "outside the folder",
        "../outside.bin": "outside the folder",
        "missing.bin": "missing",
    }
    for name, why in cases.items():
        (folder / "SHA256SUMS").write_text(f"{good}  {WEIGHT_NAME}\n{'0' * 64}  {name}\n")
        load_error(folder, "SHA256SUMS", why)  # refused before reading (``within``: a hang fails the test)
    (folder / "SHA256SUMS").write_text(f"{good} *{WEIGHT_NAME}\n\n")  # binary-mode marker, blank line
    within(60, load_model, str(folder), device="cpu")
    (folder / "SHA256SUMS").write_text("not a checksum line\n")
    load_error(folder, "SHA256SUMS", "line 1")


def test_checksums_are_cached_per_file_version_and_rechecked_after_a_change(folder, tmp_path):
    from studio.core import file_hashes

    weights = folder / WEIGHT_NAME
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_hashes.cached_sha256(weights) == digest
    cache = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert cache[str(weights.resolve())]["sha256"] == digest
    (folder / "SHA256SUMS").write_text(f"{digest}  {WEIGHT_NAME}\n")
    load_model(str(folder), device="cpu")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, new content and mtime: the cached digest must not be used
    weights.write_bytes(bytes(data))
    assert file_hashes.cached_sha256(weights) == hashlib.sha256(bytes(data)).hexdigest()
    load_error(folder, WEIGHT_NAME, "SHA256SUMS")


# -- bounded, regular-file-only reads ------------------------------------------------------------
@posix_only
@pytest.mark.parametrize("name", ["config.json", "scheduler_config.json", "class_names.json", "recommended.json"])
def test_a_config_linked_to_an_endless_device_or_a_fifo_is_refused(folder, name):
    target = folder / name
    if target.exists():
        target.unlink()
    os.symlink("/dev/zero", target)
    load_error(folder, name, "character device")
    target.unlink()
    os.mkfifo(target)  # nobody writes: a plain open() would block for ever
    load_error(folder, name, "pipe (FIFO)")


def test_an_oversized_config_is_refused_with_its_size(folder):
    (folder / "scheduler_config.json").write_text("{" + " " * (3 << 20) + "}")
    msg = load_error(folder, "scheduler_config.json", "too large")
    assert "3.0 MB" in msg


@pytest.mark.parametrize("text,what", [("[" * 100000 + "]" * 100000, "nested"), ("{\"a\": " + "9" * 5000 + "}", "JSON")])
def test_pathological_json_is_one_line(tmp_path, text, what):
    p = tmp_path / "x.json"
    p.write_text(text)
    with pytest.raises(FileReadError, match=what) as ei:
        read_json(p)
    assert "\n" not in str(ei.value)


@posix_only
def test_the_reader_refuses_devices_fifos_and_folders(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    for path, why in ((tmp_path / "fifo", "FIFO"), ("/dev/zero", "character device"), (tmp_path, "folder")):
        with pytest.raises(FileReadError, match=why):
            within(10, read_limited, path)
    (tmp_path / "ok").write_bytes(b"12345")
    assert read_limited(tmp_path / "ok", limit=5) == b"12345"
    with pytest.raises(FileReadError, match="too large"):
        read_limited(tmp_path / "ok", limit=4)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"x")
    assert inside_folder(tmp_path, "sub/f") == (tmp_path / "sub" / "f").resolve()
    with pytest.raises(FileReadError, match="outside"):
        inside_folder(tmp_path / "sub", "../ok")


# -- impossible networks --------------------------------------------------------------------------
def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_a_network_too_large_for_memory_is_refused_from_its_parameter_count(folder):
    _edit_config(folder, block_out_channels=[1 << 20, 1 << 21])
    msg = load_error(folder, "config.json", "parameters", "available")  # counted, not allocated
    assert any(u in msg for u in ("TB", "GB")), msg


def test_a_huge_sample_size_is_refused_before_allocating(folder):
    _edit_config(folder, sample_size=60000)
    load_error(folder, "config.json", "sample_size")


def test_module_counts_that_would_take_forever_to_build_are_refused(folder):
    _edit_config(folder, layers_per_block=10**6)
    load_error(folder, "config.json", "layers_per_block")


def test_fits_checks_parameters_and_device_memory_with_the_numbers():
    free = lambda dev: 64 << 20  # noqa: E731 - a machine with 64 MB free
    check_fits(1_000_000, {"sample_size": 32, "block_out_channels": [32]}, torch.device("cpu"), torch.float32,
               "cfg", ModelLoadError, available=free)
    with pytest.raises(ModelLoadError, match=r"20,000,000 parameters \(76\.3 MB in float32\).*64\.0 MB"):
        check_fits(20_000_000, {}, torch.device("cpu"), torch.float32, "cfg", ModelLoadError, available=free)
    with pytest.raises(ModelLoadError, match="cuda"):
        check_fits(10_000_000, {}, torch.device("cuda"), torch.float32, "cfg", ModelLoadError,
                   available=lambda d: (1 << 40) if d.type == "cpu" else (16 << 20))
    assert human_bytes(3 << 30) == "3.0 GB"


@pytest.mark.parametrize("key,value", [("sample_size", "big"), ("in_channels", -3), ("num_class_embeds", 2.5)])
def test_unet_config_fields_of_the_wrong_type(folder, key, value):
    _edit_config(folder, **{key: value})
    load_error(folder, "config.json", key)


# -- scheduler_config.json ------------------------------------------------------------------------
@pytest.mark.parametrize("changes,key", [
    (dict(beta_end=1.0), "beta_end"), (dict(beta_end=1.5), "beta_end"), (dict(beta_start=0.0), "beta_start"),
    (dict(beta_start=0.05, beta_end=0.02), "beta_start"), (dict(num_train_timesteps=10**9), "num_train_timesteps"),
    (dict(num_train_timesteps="1000"), "num_train_timesteps"), (dict(num_train_timesteps=1), "num_train_timesteps"),
    (dict(trained_betas=5), "trained_betas"), (dict(trained_betas=[0.1, 1.2]), "trained_betas[1]"),
    (dict(beta_schedule="sigmoid"), "beta_schedule"), (dict(prediction_type="noise"), "prediction_type"),
    (dict(timestep_spacing="karras"), "timestep_spacing"), (dict(steps_offset=-1), "steps_offset"),
    (dict(clip_sample="yes"), "clip_sample"),
])
def test_bad_schedule_values_name_the_file_and_key(folder, changes, key):
    cfg = json.loads((folder / "scheduler_config.json").read_text())
    cfg.update(changes)
    (folder / "scheduler_config.json").write_text(json.dumps(cfg))
    load_error(folder, "scheduler_config.json", key)


def test_schedule_overrides_are_checked_the_same_way():
    from studio.core.schedule import NoiseSchedule, ScheduleError

    with pytest.raises(ScheduleError, match="beta_end"):
        NoiseSchedule.from_config({}, beta_end=1.0)
    with pytest.raises(ScheduleError, match="beta_start"):
        NoiseSchedule.from_config({"beta_end": 0.01}, beta_start=0.02)
    assert NoiseSchedule.from_config({}, beta_end=0.01).num_train_timesteps == 1000


# -- class_names.json and classifiers -------------------------------------------------------------
@pytest.fixture(scope="module")
def cond_unet():
    return make_unet(num_class_embeds=4).eval()


@pytest.mark.parametrize("content,names", [
    ("7", ["class_names.json", "a number"]),
    ('"cat"', ["class_names.json", "a string"]),
    ('{"class_names": "cat dog"}', ["class_names", "a string"]),
    ('{"class_names": ["a", "b", "c"], "null_label": 99}', ["null_label", "99"]),
    ('{"class_names": ["a", "b", "c"], "null_label": "last"}', ["null_label", "'last'"]),
    ('{"class_names": ["a", "b", "c"], "null_label": true}', ["null_label"]),
    ('["a", null, "c"]', ["entry 1"]),
    ('["a", "b"]', ["2 class names", "4 class embeddings"]),
    ('["a", "b", "c", "d", "e"]', ["5 class names"]),
    ('{"class_names": ["a", "b", "c", "d"], "null_label": 3}', ["4 class names"]),
])
def test_class_names_of_the_wrong_shape(cond_unet, tmp_path, content, names):
    f = save_model_folder(cond_unet, tmp_path / "c", SCHED)
    (f / "class_names.json").write_text(content)
    load_error(f, "class_names.json", *names)


def test_class_names_shapes_that_are_right(cond_unet, tmp_path):
    f = save_model_folder(cond_unet, tmp_path / "c", SCHED)
    for content, classes, null in (('["a", "b", "c"]', 3, 3), ('["a", "b", "c", "d"]', 4, None),
                                   ('{"class_names": ["a", "b", "c"], "null_label": 0}', 3, 0), ("", 4, None)):
        (f / "class_names.json").write_text(content)
        info = load_model(str(f), device="cpu").info
        assert (info.num_classes, info.null_label) == (classes, null), content


def _classifier(folder, num_classes):
    from studio.training.classifier import NoiseAwareClassifier, save_classifier

    torch.manual_seed(0)
    net = NoiseAwareClassifier(in_channels=3, base_channels=8, channel_mult=(1,), num_res_blocks=1, time_embed_dim=16,
                               norm_groups=4, num_classes=num_classes, sample_size=8)
    return save_classifier(net, folder)


def test_a_classifier_with_another_class_count_is_refused_at_load(cond_unet, tmp_path):
    f = save_model_folder(cond_unet, tmp_path / "c", SCHED, class_names=["a", "b", "c"])
    _classifier(f / "classifier", 10)
    load_error(f, "classifier", "num_classes 10", "3 classes")
    other = _classifier(tmp_path / "clf3", 3)
    m = load_model(str(f), device="cpu", classifier=str(other))  # an explicit one that fits
    assert m.info.has_classifier and m.info.num_classes == 3


# -- initial noise -----------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"\x93NUMPY\x01\x00", "truncated"])
def test_broken_init_noise_is_one_line(tmp_path, capsys, content):
    from studio.cli import main

    p = tmp_path / "noise.npy"
    if content == "truncated":
        np.save(p, np.zeros((2, 3, 16, 16), np.float32))
        p.write_bytes(p.read_bytes()[:200])
    else:
        p.write_bytes(content)
    rc = main(["sample", "--model", "gmm", "--steps", "2", "--init-noise", str(p), "--quiet",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "noise.npy" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out").exists()


# -- pickled weights (--allow-pickle) ---------------------------------------------------------------------
def _pickled(folder, content) -> str:
    import pickle

    (folder / WEIGHT_NAME).unlink()
    path = folder / "diffusion_pytorch_model.bin"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, tuple):  # (protocol, object): a plain pickle, not a torch.save archive
        path.write_bytes(pickle.dumps(content[1], protocol=content[0]))
    else:
        torch.save(content, path)
    return str(path)


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_plain_pickle_is_one_line_without_torchs_protocol_warning(folder, unet, recwarn, capfd, protocol):
    """torch's weights-only reader warns about pickle protocols 3+ (UserWarning on stderr): kept off, so the
    refusal is the only line."""
    path = _pickled(folder, (protocol, dict(unet.state_dict())))
    load_error(folder, path, "pickle instruction", allow_pickle=True)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], [str(w.message) for w in recwarn]
    assert "protocol" not in capfd.readouterr().err


@pytest.mark.parametrize("value", [3, [1.0, 2.0], "weights", None])
def test_a_state_dict_entry_that_is_not_a_tensor_names_the_file_and_key(folder, unet, value):
    sd = {**unet.state_dict(), "conv_in.bias": value}
    path = _pickled(folder, sd)
    load_error(folder, path, "'conv_in.bias'", type(value).__name__, "not a tensor", allow_pickle=True)


def test_a_pickle_that_would_run_code_names_the_object(folder):
    path = _pickled(folder, b"cos\nsystem\n(S'echo owned'\ntR.")
    load_error(folder, path, "os.system", allow_pickle=True)


def test_a_bin_that_is_not_a_dict_says_what_it_holds(folder):
    path = _pickled(folder, [torch.zeros(2)])
    load_error(folder, path, "holds a list", allow_pickle=True)
