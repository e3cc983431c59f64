"""MNIST's preprocessing of users' pictures: geometry, polarity, colours, noise, bad files (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_early_stopping.serving import images

RING = (40, 60, 160, 300)  # left, top, right, bottom: a "0" twice as tall as wide
# Where the real MNIST digits' centres of mass sit, (row, column) in pixel indices: 13.5 to 14.5.
MNIST_CENTRE = 14.0


def picture(
    size: tuple[int, int] = (300, 400), box: tuple[int, int, int, int] = RING, ink: object = 0,
    paper: object = 255, mode: str = "L", width: int | None = None,
) -> Image.Image:
    """An elliptic ring (a zero) drawn in `box` on a `size` (width, height) canvas, without anti-aliasing."""
    img = Image.new(mode, size, paper)
    stroke = width or max(1, (box[3] - box[1]) // 12)
    ImageDraw.Draw(img).ellipse(box, outline=ink, width=stroke)
    return img


def spans(out: np.ndarray) -> tuple[int, int]:
    """(rows, columns) spanned by the bounding box of the nonzero pixels."""
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def assert_mnist_geometry(out: np.ndarray, expected_spans: tuple[int, int]) -> None:
    """uint8 28x28, ink reaching 255, spans as expected (-1 where an edge row rounds to 0), centred mass."""
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out.max() == 255
    # The patch is exactly box_size, so the ink cannot span more; a faint anti-aliased
    # edge row or column may round to 0 and span one less.
    for got, want in zip(spans(out), expected_spans):
        assert want - 1 <= got <= want, (spans(out), expected_spans)
    row, col = images.centre_of_mass(out.astype(np.float64))
    assert abs(row - MNIST_CENTRE) <= 0.5 and abs(col - MNIST_CENTRE) <= 0.5, (row, col)


def saved(img: Image.Image, path: Path, **options: object) -> Path:
    """Save the picture to `path` and return the path."""
    img.save(path, **options)
    return path


def test_box_size_makes_the_longest_side_20_and_keeps_the_aspect_ratio() -> None:
    assert images.box_size(240, 120) == (20, 10)
    assert images.box_size(120, 240) == (10, 20)
    assert images.box_size(7, 4) == (20, 11)
    assert images.box_size(5, 5) == (20, 20)
    assert images.box_size(1000, 3) == (20, 1)  # never 0 wide


def test_a_ring_fills_20_pixels_with_its_centre_of_mass_at_the_centre() -> None:
    out = images.preprocess(picture())
    # The ring's ink spans 121 x 241 pixels: 241 -> 20 rows, 121 -> 10 columns.
    assert_mnist_geometry(out, (20, 10))
    assert out[14, 14] == 0  # the hole stays empty: ink bright, background black


def test_light_and_dark_backgrounds_give_the_same_image() -> None:
    dark_on_light = images.preprocess(picture(ink=0, paper=255))
    light_on_dark = images.preprocess(picture(ink=255, paper=0))
    np.testing.assert_array_equal(dark_on_light, light_on_dark)
    # Pencil grey on grey paper is stretched to MNIST's full contrast.
    np.testing.assert_array_equal(images.preprocess(picture(ink=90, paper=200)), dark_on_light)
    np.testing.assert_array_equal(images.preprocess(picture(ink=200, paper=60)), dark_on_light)


def test_colour_pictures_match_the_grey_one() -> None:
    grey = images.preprocess(picture())
    blue_on_yellow = picture(mode="RGB", ink=(0, 0, 200), paper=(250, 240, 120))
    np.testing.assert_array_equal(images.preprocess(blue_on_yellow), grey)
    np.testing.assert_array_equal(images.preprocess(picture().convert("P")), grey)
    np.testing.assert_array_equal(images.preprocess(picture().convert("1")), grey)


@pytest.mark.parametrize(
    "ink, transparent",
    [
        ((0, 0, 0, 255), (0, 0, 0, 0)),
        ((255, 255, 255, 255), (255, 255, 255, 0)),
        ((20, 20, 160, 255), (0, 0, 0, 0)),
    ],
    ids=["black-strokes-on-transparent-black", "white-strokes-on-transparent-white", "blue-strokes"],
)
def test_transparent_pixels_are_background(ink: tuple, transparent: tuple) -> None:
    # Whatever colour the transparent pixels hold (here even the strokes' own), they are background.
    rgba = picture(mode="RGBA", ink=ink, paper=transparent)
    np.testing.assert_array_equal(images.preprocess(rgba), images.preprocess(picture()))


def test_palette_with_a_transparent_index_read_from_a_file(tmp_path: Path) -> None:
    img = picture(mode="P", ink=1, paper=0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)  # index 0 black but transparent, 1 dark red
    path = saved(img, tmp_path / "palette.png", transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    np.testing.assert_array_equal(images.load(path), images.preprocess(picture()))


def test_sixteen_bit_grey_file(tmp_path: Path) -> None:
    levels = np.where(np.asarray(picture()) > 0, 60000, 3000).astype(np.uint16)
    path = saved(Image.fromarray(levels), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(images.load(path), images.preprocess(picture()))


def test_a_gif_gives_its_first_frame(tmp_path: Path) -> None:
    first, second = picture(), picture(box=(20, 20, 280, 120))
    path = saved(first, tmp_path / "anim.gif", save_all=True, append_images=[second])
    assert Image.open(path).n_frames == 2
    np.testing.assert_array_equal(images.load(path), images.preprocess(first))


def test_a_large_digit_in_a_corner() -> None:
    img = picture(size=(1200, 900), box=(10, 15, 410, 815), width=60)
    assert_mnist_geometry(images.preprocess(img), (20, 10))


def test_a_tiny_digit_is_scaled_up() -> None:
    img = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(img).rectangle((70, 10, 73, 16), outline=0)  # 4 wide, 7 tall
    assert_mnist_geometry(images.preprocess(img), images.box_size(7, 4))


def test_a_wide_digit_keeps_its_aspect_ratio() -> None:
    img = picture(size=(400, 300), box=(20, 200, 220, 250), width=8)  # 201 x 51
    assert images.box_size(51, 201) == (5, 20)
    assert_mnist_geometry(images.preprocess(img), (5, 20))


def test_mass_on_one_side_stays_inside_the_field() -> None:
    img = Image.new("L", (200, 200), 255)
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 10, 180, 60), fill=0)  # a heavy top bar
    draw.line((100, 60, 100, 190), fill=0, width=2)  # a thin stem below it
    out = images.preprocess(img)
    # Centring the mass (near the top) would push the stem out of the field: it is held in, whole.
    assert spans(out) == images.box_size(181, 161) == (20, 18)
    assert out[-1].max() > 0 and images.centre_of_mass(out.astype(float))[0] < MNIST_CENTRE - 1


def test_jpeg_noise_changes_little(tmp_path: Path) -> None:
    drawing = picture(mode="RGB", ink=(0, 0, 0), paper=(255, 255, 255))
    clean = images.preprocess(drawing)
    noisy = images.load(saved(drawing, tmp_path / "noisy.jpg", quality=60))
    assert_mnist_geometry(noisy, spans(clean))
    # The ring is symmetric, its centre of mass halfway between pixels: the noise may
    # tip the rounding of the shift either way, so compare at the best whole-pixel shift.
    shifted = [np.roll(noisy, (dr, dc), axis=(0, 1)) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]
    difference = min(np.abs(s.astype(int) - clean.astype(int)).mean() for s in shifted)
    assert difference < 3
    # Compression noise adds no ink: the background stays black, as MNIST's is.
    assert (noisy > 0).sum() <= (clean > 0).sum() + 5


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to view
    path = saved(picture(size=(400, 300), box=(20, 200, 220, 250), width=8), tmp_path / "side.jpg", exif=exif)
    assert_mnist_geometry(images.load(path), (20, 5))


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (40, 40), 255),
        Image.new("L", (40, 40), 0),
        Image.new("RGB", (40, 40), (120, 130, 140)),
        Image.new("RGBA", (40, 40), (0, 0, 0, 0)),
        picture(ink=240, paper=255),  # contrast 15/255: too faint to tell from noise
    ],
    ids=["white", "black", "grey", "transparent", "too-faint"],
)
def test_blank_images_are_errors(img: Image.Image) -> None:
    with pytest.raises(images.ImageError, match="blank image"):
        images.preprocess(img)


def test_a_noisy_blank_jpeg_is_an_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paper = (245 + rng.integers(-6, 7, (120, 120))).astype(np.uint8)
    path = saved(Image.fromarray(paper), tmp_path / "paper.jpg", quality=70)
    with pytest.raises(images.ImageError, match="blank image"):
        images.load(path)


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a picture\n")
    whole = saved(picture(), tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    cases = {
        "notes.txt": "not an image Pillow can read",
        "cut.png": "truncated or corrupt",
        "missing.png": "no such file",
        ".": "a folder",
    }
    for name, problem in cases.items():
        with pytest.raises(images.ImageError, match=problem):
            images.load(tmp_path / name)
