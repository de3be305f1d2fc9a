"""matplotlib without a display, and figures saved atomically."""

import io
import warnings

import matplotlib
import matplotlib.pyplot as plt

from .. import atomic


def pyplot():
    """pyplot, drawing off screen unless a notebook shows the figures inline."""
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    return plt


def save_png(fig, path, dpi: int = 100):
    """Write `fig` to `path` as a PNG, whole or not at all."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a character the font lacks (an emoji) is drawn as a box; that is enough
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic.write_bytes(path, buffer.getvalue())
