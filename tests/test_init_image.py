"""Opening a user's image (core/images.py): the fitting rules, every conversion noted, bad files one line.

Real image files are written to tmp_path with Pillow in each unusual mode (RGBA, LA, L, I;16, P, P with a
transparent index, CMYK, an EXIF-rotated JPEG) and read back through ``open_image``; the expected pixels are
computed independently from the arrays the files were made from.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from studio.core.images import BACKGROUND, MAX_PIXELS, MIN_SIDE, ImageError, fit, open_image


def halves(w: int = 32, h: int = 16) -> np.ndarray:
    """(h, w, 3) uint8: the left half red, the right half blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2, 0] = 255
    arr[:, w // 2:, 2] = 255
    return arr


def as_pixels(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 → (1, C, H, W) in [−1, 1], as the studio should read it."""
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255 * 2 - 1)[None]


def test_plain_rgb_at_the_right_size_is_read_exactly_with_no_notes(tmp_path):
    arr = np.random.RandomState(0).randint(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    got = open_image(tmp_path / "a.png", (16, 16))
    assert got.notes == () and got.source_size == (16, 16)
    assert torch.allclose(got.pixels, as_pixels(arr), atol=1e-6)


def test_crop_resizes_the_short_side_and_keeps_the_centre(tmp_path):
    arr = np.random.RandomState(1).randint(0, 256, (16, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    got = open_image(tmp_path / "wide.png", (16, 16), fit_mode="crop")
    assert torch.allclose(got.pixels, as_pixels(arr[:, 8:24]), atol=1e-6)  # the short side is already 16
    assert got.notes == ("centre-cropped from 32×16 to 16×16",)


def test_crop_scales_then_crops_a_larger_image(tmp_path):
    Image.fromarray(halves(64, 32)).save(tmp_path / "big.png")
    got = open_image(tmp_path / "big.png", (16, 16), fit_mode="crop")
    assert got.notes == ("resized from 64×32 to 32×16 and centre-cropped to 16×16",)
    x = got.pixels[0]
    assert x.shape == (3, 16, 16)
    red, blue = torch.tensor([1.0, -1.0, -1.0])[:, None, None], torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    assert torch.allclose(x[:, :, :6], red.expand(3, 16, 6), atol=0.02)  # the centre of the red half …
    assert torch.allclose(x[:, :, 10:], blue.expand(3, 16, 6), atol=0.02)  # … and of the blue one


def test_resize_keeps_the_whole_image(tmp_path):
    Image.fromarray(halves(32, 16)).save(tmp_path / "wide.png")
    got = open_image(tmp_path / "wide.png", (16, 16), fit_mode="resize")
    assert got.notes == ("resized from 32×16 to 16×16",)
    x = got.pixels[0]
    assert (x[0, :, :6] > 0.95).all() and (x[2, :, :6] < -0.95).all()  # the left half is still red …
    assert (x[2, :, 10:] > 0.95).all() and (x[0, :, 10:] < -0.95).all()  # … and the right half blue


def test_fit_modes_are_checked():
    with pytest.raises(ValueError, match="not one of crop, resize"):
        fit(torch.zeros(1, 3, 8, 8), (4, 4), "squash")


def test_rgba_is_composited_on_the_stated_background(tmp_path):
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[..., 1] = 200
    arr[:, :8, 3] = 255  # left opaque green, right fully transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "alpha.png")
    got = open_image(tmp_path / "alpha.png", (16, 16))
    assert "transparency composited on white" in got.notes and BACKGROUND == (255, 255, 255)
    x = got.pixels[0]
    assert torch.allclose(x[:, :, :8], as_pixels(np.zeros((16, 8, 3), np.uint8) + [0, 200, 0])[0], atol=1e-6)
    assert torch.allclose(x[:, :, 8:], torch.ones(3, 16, 8))  # white


def test_greyscale_is_repeated_into_rgb(tmp_path):
    arr = np.random.RandomState(2).randint(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(arr, "L").save(tmp_path / "grey.png")
    got = open_image(tmp_path / "grey.png", (16, 16))
    assert got.notes == ("greyscale repeated into R, G and B",)
    assert torch.allclose(got.pixels, as_pixels(np.repeat(arr[..., None], 3, -1)), atol=1e-6)


def test_greyscale_with_alpha(tmp_path):
    arr = np.stack([np.full((16, 16), 40, np.uint8), np.full((16, 16), 0, np.uint8)], -1)
    Image.fromarray(arr, "LA").save(tmp_path / "la.png")
    got = open_image(tmp_path / "la.png", (16, 16))
    assert "transparency composited on white" in got.notes and torch.allclose(got.pixels, torch.ones(1, 3, 16, 16))


def test_16_bit_greyscale_keeps_its_depth(tmp_path):
    arr = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257 + 3).astype(np.uint16)
    arr[0, 0] = 65535
    Image.fromarray(arr).save(tmp_path / "deep.png")
    got = open_image(tmp_path / "deep.png", (16, 16), channels=1)
    assert any("16-bit" in n for n in got.notes)
    expected = torch.from_numpy(arr.astype(np.float64) / 65535 * 2 - 1).float()
    assert torch.allclose(got.pixels[0, 0], expected, atol=1e-6)  # finer than 8 bits: + 3/65535 survives


def test_palette_images_are_expanded(tmp_path):
    rgb = Image.fromarray(np.random.RandomState(3).randint(0, 256, (16, 16, 3), dtype=np.uint8))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "pal.png")
    got = open_image(tmp_path / "pal.png", (16, 16))
    assert got.notes == ("palette colours expanded to RGB",)
    assert torch.allclose(got.pixels, as_pixels(np.asarray(pal.convert("RGB"))), atol=1e-6)


def test_palette_with_a_transparent_index(tmp_path):
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 8, 16))
    pal.save(tmp_path / "tpal.png", transparency=0)
    got = open_image(tmp_path / "tpal.png", (16, 16))
    assert "palette colours expanded to RGB" in got.notes and "transparency composited on white" in got.notes
    assert torch.allclose(got.pixels[0, :, :, 8:], torch.ones(3, 16, 8))  # index 0 is transparent: white
    assert torch.allclose(got.pixels[0, :, 0, 0], torch.tensor([250, 0, 0]) / 255 * 2 - 1)


def test_cmyk_is_converted(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 0] = 255  # full cyan
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tiff")
    got = open_image(tmp_path / "c.tiff", (16, 16))
    assert got.notes == ("CMYK converted to RGB (no colour profile applied)",)
    assert torch.allclose(got.pixels[0, :, 0, 0], torch.tensor([-1.0, 1.0, 1.0]))  # cyan = no red


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(halves(24, 16))  # landscape, left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90° clockwise
    img.save(tmp_path / "phone.jpg", quality=100, exif=exif.tobytes())
    got = open_image(tmp_path / "phone.jpg", (24, 16))  # (H, W): portrait once upright
    assert got.notes[0] == "turned upright by its EXIF orientation (6)" and len(got.notes) == 1
    x = got.pixels[0]
    assert (x[0, :10] > 0.8).all() and (x[2, :10] < -0.8).all()  # red on top (was left) …
    assert (x[2, 14:] > 0.8).all() and (x[0, 14:] < -0.8).all()  # … blue below


def test_a_grey_model_gets_luma(tmp_path):
    arr = np.random.RandomState(4).randint(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "rgb.png")
    got = open_image(tmp_path / "rgb.png", (16, 16), channels=1)
    assert got.notes == ("colour converted to greyscale (ITU-R 601 luma)",)
    luma = arr.astype(np.float64) @ [0.299, 0.587, 0.114] / 255 * 2 - 1
    assert torch.allclose(got.pixels[0, 0].double(), torch.from_numpy(luma), atol=1e-6)


# -- bad files ------------------------------------------------------------------------------------------------------

def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels (its data is one tiny row): a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4)) + chunk(b"IEND", b"")


def truncated(tmp_path, suffix: str) -> bytes:
    arr = np.random.RandomState(5).randint(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("content,pattern", [
    (b"just some text\n", "not an image Pillow can read"),
    (b"", "the file is empty"),
    (lambda tmp: truncated(tmp, ".png"), "damaged or truncated"),
    (lambda tmp: truncated(tmp, ".jpg"), "damaged or truncated"),
    (lambda tmp: png_claiming(100_000, 100_000), "decompression bomb"),
    (lambda tmp: png_to_bytes(np.zeros((1, 1, 3), np.uint8), tmp), f"at least {MIN_SIDE} pixels"),
])
def test_bad_files_are_one_line(tmp_path, content, pattern):
    data = content(tmp_path) if callable(content) else content
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=pattern) as e:
        open_image(path, (16, 16))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert MAX_PIXELS < 100_000 * 100_000


def png_to_bytes(arr: np.ndarray, tmp) -> bytes:
    Image.fromarray(arr).save(tmp / "tiny.png")
    return (tmp / "tiny.png").read_bytes()


def test_missing_file_and_folder_are_one_line(tmp_path):
    for path, pattern in ((tmp_path / "nope.png", "missing"), (tmp_path, "folder")):
        with pytest.raises(ImageError, match=pattern):
            open_image(path, (16, 16))


def test_a_model_with_other_channels_is_refused(tmp_path):
    Image.fromarray(halves()).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="only 1- and 3-channel models take an image"):
        open_image(tmp_path / "a.png", (16, 16), channels=4)


def test_cli_refuses_a_bad_image_in_one_line_and_writes_nothing(tmp_path, capsys):
    from studio.cli import main

    (tmp_path / "notes.png").write_text("not a picture")
    out = tmp_path / "out"
    code = main(["sample", "--model", "gmm", "--init-image", str(tmp_path / "notes.png"), "--guidance", "none",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "init_image:" in err and "not an image" in err
    assert not out.exists()
