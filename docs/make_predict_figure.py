"""Draw docs/predict_example.png (a digit as a user might photograph or draw it) and
docs/predict_preprocessing.png (that picture beside what the network sees).

Run from the project root: python docs/make_predict_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from mnist_early_stopping.serving import images  # noqa: E402

DOCS = Path(__file__).resolve().parent
EXAMPLE = DOCS / "predict_example.png"
FIGURE = DOCS / "predict_preprocessing.png"


def example_picture() -> Image.Image:
    """A seven in dark blue ink on greyish paper, off-centre, slightly blurred like a photo."""
    rng = np.random.default_rng(7)
    paper = np.clip(rng.normal(232, 4, (240, 320, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(paper)
    draw = ImageDraw.Draw(img)
    ink = (30, 40, 90)
    draw.line([(52, 48), (140, 40), (150, 46), (108, 132), (86, 206)], fill=ink, width=17, joint="curve")
    draw.line([(86, 120), (142, 116)], fill=ink, width=14)
    return img.filter(ImageFilter.GaussianBlur(1.2))


def draw_figure(picture: Image.Image) -> Figure:
    """Three panels: the picture, the ink cropped from it, and the 28x28 field the network gets."""
    ink = images.crop_to_ink(images.ink_contrast(images.to_grey(picture)))
    field = images.preprocess(picture)
    row, col = images.centre_of_mass(field.astype(np.float64))
    fig = Figure(figsize=(9.6, 3.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [4 / 3, 1, 1]})
    axes[0].imshow(np.asarray(picture))
    axes[0].set_title(f"your picture ({picture.width}x{picture.height}, RGB)", fontsize=10)
    axes[1].imshow(ink, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"ink, bright on black,\ncropped ({ink.shape[1]}x{ink.shape[0]})", fontsize=10)
    axes[2].imshow(field, cmap="gray", vmin=0, vmax=255)
    axes[2].plot([col], [row], "+", color="tab:red", markersize=14, markeredgewidth=2)
    axes[2].set_title("what the network sees (28x28):\nlongest side 20 px, + = centre of mass", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def main() -> None:
    """Write the example picture and the figure into docs/."""
    picture = example_picture()
    picture.save(EXAMPLE)
    draw_figure(picture).savefig(FIGURE, dpi=100, metadata={"Software": None})
    print(f"wrote {EXAMPLE.name} and {FIGURE.name}")


if __name__ == "__main__":
    main()
