"""Open an uploaded image safely: refuse files that are too large, not images, damaged, decompression
bombs (a small file whose header claims a huge picture) or in a mode that is not 8-bit colour, each
with a message that says what was wrong and what to send instead.

The pixel count is checked from the header, before anything is decoded, so a bomb never allocates.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import PIL.Image

# Upload limits: the server refuses larger files itself (Gradio's max_file_size), and this check
# repeats it for paths given any other way.
MAX_UPLOAD_MB = 20
MAX_PIXELS = 4096 * 4096
# Modes converted to RGB without loss of meaning: colour, greyscale, palette and black-and-white.
ACCEPTED_MODES = ("RGB", "L", "P", "1")
# Why other modes are refused, and what to send instead.
MODE_PROBLEMS = {
    "RGBA": "has an alpha channel (transparency)",
    "LA": "has an alpha channel (transparency)",
    "PA": "has an alpha channel (transparency)",
    "RGBa": "has an alpha channel (transparency)",
    "La": "has an alpha channel (transparency)",
    "CMYK": "is CMYK (print colours)",
    "I;16": "has 16 bits per pixel",
    "I;16B": "has 16 bits per pixel",
    "I;16L": "has 16 bits per pixel",
    "I;16N": "has 16 bits per pixel",
    "I": "has 32-bit integer pixels",
    "F": "has 32-bit float pixels",
}


def _open(path: Path, what: str) -> PIL.Image.Image:
    """``PIL.Image.open`` (reads the header only), with its errors and bomb warnings as messages."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            return PIL.Image.open(path)
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
            raise ValueError(
                f"the {what} claims more pixels than can be decoded safely (a decompression bomb?); "
                f"send one of at most {MAX_PIXELS // 10**6} megapixels"
            ) from None
        except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ValueError(
                f"the {what} could not be read as an image ({type(error).__name__}); send a PNG, JPEG or WebP file"
            ) from None


def open_upload_image(path: str | Path, what: str = "image") -> PIL.Image.Image:
    """The uploaded file at ``path`` as an 8-bit RGB image, or a ``ValueError`` naming what is wrong
    with it (``what`` names the upload in the message, e.g. "style image")."""
    path = Path(path)
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise ValueError(f"the {what} is {size_mb:.1f} MB; send one of at most {MAX_UPLOAD_MB} MB")
    with _open(path, what) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(
                f"the {what} is {width}x{height} pixels ({width * height / 10**6:.0f} megapixels); "
                f"send one of at most {MAX_PIXELS // 10**6} megapixels"
            )
        if image.mode not in ACCEPTED_MODES:
            problem = MODE_PROBLEMS.get(image.mode, f"is in the unsupported mode {image.mode}")
            raise ValueError(f"the {what} {problem}; send an 8-bit RGB or greyscale image (e.g. a JPEG)")
        if image.mode == "P" and "transparency" in image.info:
            raise ValueError(f"the {what} has a transparent colour; send an 8-bit RGB image without transparency")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"the {what} is damaged or cut short ({error}); send the complete file") from None
        return image.convert("RGB")
