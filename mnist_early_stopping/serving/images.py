"""A user's picture of a digit -> a 28x28 image prepared the way MNIST's digits were (numpy and Pillow only).

MNIST's digits were scaled, anti-aliased, to fit a 20x20 box keeping their
aspect ratio, then put in a 28x28 field with their intensity-weighted centre
of mass on the field's centre. On the real test set the centre of mass sits
at (row, column) 13.5-14.5 in pixel indices and the nonzero pixels span
exactly 20 pixels on the longest side; `preprocess` reproduces both.

Steps: grey (alpha composited onto a backdrop), ink bright on black (the
background is the median of the outer frame), crop to the ink, scale the
longest side to 20 (its strongest pixel full white), paste with the centre of
mass at (14, 14).
"""

from __future__ import annotations

import math
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_early_stopping.pipeline.stage import first_line

FIELD = 28
BOX = 20
# Target of the centre of mass in pixel indices (row, column): where MNIST's sit.
CENTRE = 14.0
# ITU-R 601 luma, as Pillow's own RGB -> L conversion.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# Ink must differ from the background by at least this (of the full range), or the image is blank.
MIN_CONTRAST = 0.1
# Pixels at least this fraction of the strongest ink count for the crop: JPEG
# ringing and paper texture stay well below it, stroke cores well above.
INK_FRACTION = 0.3
# Contrast below this fraction of the strongest ink is noise and becomes black, as MNIST's background is.
NOISE_FRACTION = 0.1
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# Bounds on what is decoded, checked from the header first: a picture of one digit is far smaller,
# and a thin tall "1" (20 x 2000) stays well inside them.
MAX_SIDE = 20_000
MAX_PIXELS = 50_000_000


class ImageError(Exception):
    """A file is not a usable picture of a digit (unreadable, not an image, blank)."""


def load(path: Path) -> np.ndarray:
    """The file's digit as MNIST sees it: uint8 (28, 28), ink bright on black; ImageError if it cannot be."""
    return preprocess(open_image(path))


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image (the first frame of an animation), upright per its EXIF orientation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{width} x {height} pixels is too large for a picture of one digit (at most {MAX_SIDE} "
                        f"on a side and {MAX_PIXELS // 1_000_000} million in all); crop or shrink it"
                    )
                img.load()  # decode now: a truncated file fails here, not later
                return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("a folder, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied; make the file readable") from None
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too many pixels to be a picture of one digit; crop or shrink it") from None
    except MemoryError:
        raise ImageError("too large to decode in memory; crop or shrink it") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error) as e:
        # Pillow's decoders raise all of these on damaged files.
        raise ImageError(f"cannot decode the image, the file may be truncated or corrupt ({first_line(e)})") from None


def preprocess(img: Image.Image) -> np.ndarray:
    """MNIST's preprocessing of one picture: uint8 (28, 28), ink bright on black."""
    ink = ink_contrast(to_grey(img))
    patch = scale_to_box(crop_to_ink(ink))
    return np.floor(centre_in_field(patch) * 255 + 0.5).astype(np.uint8)


def to_grey(img: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1] (float32, H x W); transparent pixels take the backdrop's level."""
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        return _high_depth_grey(img)
    try:
        rgba = np.asarray(img.convert("RGBA"), np.float32) / 255
    except ValueError as e:
        raise ImageError(f"unsupported colour mode {img.mode} ({e}); save it as PNG or JPEG") from None
    grey, alpha = rgba[..., :3] @ LUMA, rgba[..., 3]
    if alpha.min() == 1.0:
        return grey
    return alpha * grey + (1 - alpha) * backdrop(grey, alpha)


def backdrop(grey: np.ndarray, alpha: np.ndarray) -> float:
    """The level transparent pixels become: white behind dark strokes, black behind light ones.

    A drawing on a transparent canvas is strokes only, and the colour stored
    in its transparent pixels is arbitrary (often black, like dark strokes):
    only the opaque content says which backdrop makes the strokes stand out.
    """
    weight = float(alpha.sum())
    if weight == 0:
        return 0.0  # fully transparent: blank whatever the backdrop
    return 1.0 if float((grey * alpha).sum()) / weight < 0.5 else 0.0


def _high_depth_grey(img: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1] of a 16-bit, 32-bit integer or float single-channel image."""
    values = np.asarray(img, np.float32)
    if not np.isfinite(values).all():
        raise ImageError("holds pixel values that are not numbers (NaN or infinite); save it without them")
    if img.mode in _SIXTEEN_BIT:
        full = 65535.0
    else:  # "I" holds 8- or 16-bit data; "F" usually [0, 1] or [0, 255]
        peak = float(values.max(initial=0.0))
        full = 1.0 if img.mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
    return np.clip(values / full, 0.0, 1.0)


def ink_contrast(grey: np.ndarray) -> np.ndarray:
    """Ink bright on black in [0, 1], stretched to full contrast; ImageError if there is no ink.

    The background level is the median of the outer one-pixel frame (a digit
    rarely covers the border); a light background means dark ink.
    """
    frame = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
    background = float(np.median(frame))
    contrast = np.clip(background - grey if background > 0.5 else grey - background, 0.0, None)
    peak = float(contrast.max(initial=0.0))
    if peak < MIN_CONTRAST:
        raise ImageError(
            f"blank image: nothing differs from the background level {background:.2f} by more than "
            f"{MIN_CONTRAST}; draw the digit darker or lighter than its background"
        )
    floor = NOISE_FRACTION * peak
    return np.clip((contrast - floor) / (peak - floor), 0.0, 1.0)


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The bounding box of the pixels at least INK_FRACTION of the strongest ink."""
    strong = ink >= INK_FRACTION * ink.max()
    rows, cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def box_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) scaled so the longer side is BOX pixels, keeping the aspect ratio."""
    longest = max(height, width)
    return max(1, round(height * BOX / longest)), max(1, round(width * BOX / longest))


def scale_to_box(ink: np.ndarray) -> np.ndarray:
    """Resample the cropped ink to box_size, anti-aliased (Lanczos on float data), peak 1."""
    height, width = box_size(*ink.shape)
    scaled = Image.fromarray(ink.astype(np.float32)).resize((width, height), Image.Resampling.LANCZOS)
    # Lanczos over- and undershoots next to sharp edges; the field holds [0, 1].
    patch = np.clip(np.asarray(scaled, np.float32), 0.0, 1.0)
    # A thin stroke shrunk a lot comes out faint; MNIST's digits all reach full intensity.
    peak = float(patch.max())
    if peak <= 0:
        raise ImageError("blank image: no ink left after scaling; draw the digit bigger or bolder")
    return patch / peak


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """The intensity-weighted mean (row, column) in pixel indices."""
    total = float(image.sum())
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum()) / total, float((cols * image).sum()) / total


def centre_in_field(patch: np.ndarray) -> np.ndarray:
    """Paste the patch into a 28x28 field, its centre of mass moved to CENTRE by a whole-pixel shift.

    A whole-pixel shift, like MNIST's, adds no blur and leaves the centre of
    mass within half a pixel of CENTRE. A patch whose mass lies far to one
    side is held inside the field instead: no ink is cut off.
    """
    com_row, com_col = centre_of_mass(patch)
    height, width = patch.shape
    top = min(max(math.floor(CENTRE - com_row + 0.5), 0), FIELD - height)
    left = min(max(math.floor(CENTRE - com_col + 0.5), 0), FIELD - width)
    field = np.zeros((FIELD, FIELD), np.float32)
    field[top : top + height, left : left + width] = patch
    return field
