"""Uploaded images (dit_accel.image_upload): good ones open as 8-bit RGB; broken, huge, bomb and
wrong-mode ones are refused with a message saying what is wrong, before anything large is decoded."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from dit_accel.image_upload import MAX_UPLOAD_MB, open_upload_image


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` greyscale pixels, with one tiny data chunk:
    a few bytes on disk that would decode to ``width * height`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )
    return path


def saved(tmp_path: Path, mode: str, name: str, **save) -> Path:
    array = np.random.default_rng(0).integers(0, 255, (12, 10, len(mode) if mode in ("RGBA", "CMYK") else 1))
    image = PIL.Image.fromarray(array.astype(np.uint8).squeeze(-1) if array.shape[-1] == 1 else array.astype(np.uint8))
    image = image.convert(mode) if image.mode != mode else image
    image.save(tmp_path / name, **save)
    return tmp_path / name


@pytest.mark.parametrize(("mode", "name"), [("RGB", "a.png"), ("L", "a.jpg"), ("P", "a.gif")])
def test_colour_greyscale_and_palette_images_open_as_rgb(tmp_path, mode, name):
    path = saved(tmp_path, mode, name)
    image = open_upload_image(path, "style image")
    assert (image.mode, image.size) == ("RGB", (10, 12))
    with PIL.Image.open(path) as original:
        assert np.array_equal(np.asarray(image), np.asarray(original.convert("RGB")))


@pytest.mark.parametrize(
    ("mode", "name", "message"),
    [
        ("RGBA", "a.png", "has an alpha channel (transparency)"),
        ("LA", "a.png", "has an alpha channel (transparency)"),
        ("CMYK", "a.jpg", "is CMYK (print colours)"),
        ("I;16", "a.png", "has 16 bits per pixel"),
        ("F", "a.tiff", "has 32-bit float pixels"),
    ],
)
def test_wrong_modes_are_refused_saying_what_to_send(tmp_path, mode, name, message):
    path = saved(tmp_path, mode, name)
    with PIL.Image.open(path) as image:
        assert image.mode == mode  # the file really is in that mode
    with pytest.raises(ValueError, match=re.escape(f"the style image {message}; send an 8-bit RGB or greyscale image")):
        open_upload_image(path, "style image")


def test_a_palette_with_a_transparent_colour_is_refused(tmp_path):
    path = saved(tmp_path, "P", "a.png", transparency=0)
    with pytest.raises(ValueError, match="has a transparent colour"):
        open_upload_image(path, "style image")


def test_files_that_are_not_images_or_are_cut_short_are_refused(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ValueError, match=r"could not be read as an image \(UnidentifiedImageError\)"):
        open_upload_image(junk, "style image")
    whole = saved(tmp_path, "RGB", "whole.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-60])
    with pytest.raises(ValueError, match="is damaged or cut short"):
        open_upload_image(cut, "style image")


def test_large_pictures_and_bombs_are_refused_from_the_header(tmp_path):
    with pytest.raises(ValueError, match=r"is 5000x5000 pixels \(25 megapixels\); send one of at most 16"):
        open_upload_image(png_header(tmp_path / "big.png", 5000, 5000), "style image")
    bomb = png_header(tmp_path / "bomb.png", 60000, 60000)  # 3.6 gigapixels in 70 bytes
    assert bomb.stat().st_size < 100
    with pytest.raises(ValueError, match=r"claims more pixels than can be decoded safely \(a decompression bomb\?\)"):
        open_upload_image(bomb, "style image")


def test_files_over_the_upload_limit_are_refused_before_opening(tmp_path):
    path = tmp_path / "huge.png"
    with path.open("wb") as file:
        file.truncate((MAX_UPLOAD_MB + 1) * 2**20)
    with pytest.raises(ValueError, match=rf"the style image is {MAX_UPLOAD_MB + 1}\.0 MB; send one of at most"):
        open_upload_image(path, "style image")
