"""Figure helpers: stand-alone Agg figures, the viridis series colours, the atomic PNG writer."""

from __future__ import annotations

import io
import math
import os
import pathlib
import sys
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spectral_jax import distributed
from spectral_jax.records import atomic_write_bytes


def _blank(w: float, h: float) -> Figure:
    """A stand-alone Agg figure (never registered with pyplot)."""
    fig = Figure(figsize=(w, h), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(w: float = 6.4, h: float = 4.4) -> tuple[Figure, object]:
    fig = _blank(w, h)
    return fig, fig.add_subplot()


def _axes(ncols: int = 1, w: float = 6.4, h: float = 4.4) -> tuple[Figure, Sequence]:
    fig = _blank(w * ncols, h)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def series_colors(n: int) -> list:
    """n colours along viridis (the palette of every figure here)."""
    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def save_figure(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
    """Write `fig` to `path` atomically (temp file in the same directory, then os.replace) and close it.

    The format follows the suffix (.png, .pdf, .svg; PNG when there is none). Parent directories are created.
    "Close" releases the figure from pyplot if the caller made it with pyplot; figures from this module are
    not tracked by pyplot and are freed once unreferenced.
    """
    path = pathlib.Path(path)
    if not distributed.is_primary():  # process 0 draws for a multi-process run
        return path
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=path.suffix[1:].lower() or "png")
        atomic_write_bytes(path, buf.getvalue())
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
    return path
