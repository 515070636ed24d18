"""How pneumoscan's figures look: the figure factory, colours, saving and the image gallery.

Shared by every stage that draws (the data report, evaluation, training, Grad-CAM). Every function
builds and returns a
:class:`matplotlib.figure.Figure` on the non-interactive Agg canvas; nothing is ever shown, and
:mod:`matplotlib.pyplot` (with its global state, unsafe in the Streamlit app's threads) is never
used. :func:`save` writes a figure as PNG. Probabilities are of PNEUMONIA, the positive class.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoscan.config import CLASS_NAMES

log = logging.getLogger(__name__)

DPI = 120
#: Colour-blind friendly (Okabe-Ito) colours.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
CLASS_COLOURS = {CLASS_NAMES[0]: "#0072B2", CLASS_NAMES[1]: "#D55E00"}


def new_figure(width: float = 6.0, height: float = 4.5, **kwargs) -> Figure:
    """A blank figure of ``width x height`` inches on an Agg canvas (not registered with pyplot)."""
    fig = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as an image (PNG by suffix) at dpi 120 with a tight bounding box, then close it.

    Figures from this module are not held by pyplot, so closing only matters for a figure made
    with :mod:`matplotlib.pyplot`; it is closed there too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    log.debug("saved figure %s", path)
    return path


def message(ax, text: str) -> None:
    """Write ``text`` in the middle of an empty axis (e.g. "No images")."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(
    images: Sequence[np.ndarray], captions: Sequence[str], *, ncols: int = 4, title: str = ""
) -> Figure:
    """A grid of grey images with a caption under each.

    Parameters
    ----------
    images : sequence of ndarray of shape (h, w), uint8
    captions : sequence of str, same length
    ncols : int
    title : str
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    if not images:
        fig = new_figure(6.0, 2.0)
        message(fig.add_subplot(), "Nothing to show (no mistakes)")
        if title:
            fig.suptitle(title)
        return fig
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig = new_figure(3.0 * ncols, 3.5 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions, strict=False):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
