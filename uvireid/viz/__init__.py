"""Plots of a run, and the one-page report (the ``viz`` extra: ``pip install "uvireid[viz]"``).

Every plot is a function of plain data (metrics records, a
:class:`~uvireid.features.Features` object) that writes one PNG and returns its path:

- :mod:`uvireid.viz.curves`: loss terms, cluster counts, pseudo-label quality, R1/mAP and
  time per phase over epochs (from ``metrics.jsonl``), the final CMC curve;
- :mod:`uvireid.viz.distances`: cross-modality positive / negative distance histograms,
  before and after a re-ranker (SALCR Fig. 9);
- :mod:`uvireid.viz.tsne`: t-SNE of a few identities, colour = identity, marker = modality
  (SALCR Fig. 10);
- :mod:`uvireid.viz.ranking`: top-k ranking lists with green / red borders, before and
  after a re-ranker (SALCR Fig. 12);
- :mod:`uvireid.viz.report`: ``report.html`` (self-contained) from a run folder.

matplotlib is imported inside the functions, never when :mod:`uvireid` or this package is
imported. Figures are drawn on :class:`matplotlib.figure.Figure` objects and rendered by
the Agg canvas: no pyplot, no global backend switch, no display needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from uvireid.errors import UvireidError

__all__ = ["INSTALL_HINT", "matplotlib_available", "new_figure", "require_matplotlib", "save"]

#: what to run when matplotlib is missing
INSTALL_HINT = 'pip install "uvireid[viz]"'


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (without raising)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or a :class:`UvireidError` saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UvireidError(
            f"plots need matplotlib, which is not installed; fix: {INSTALL_HINT} "
            f"(or pip install matplotlib)"
        ) from None
    return matplotlib


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches with constrained layout.

    The figure is not registered with pyplot (nothing to close, nothing shown); saving it
    with :func:`save` renders with Agg.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Any, path: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` as a PNG of exactly ``figsize * dpi`` pixels (no tight bounding box):
    rendered in memory, then renamed into place (an interrupted save leaves the earlier
    file), or written through a link or a pipe (``/dev/stdout``)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from uvireid.fileio import write_output

    out = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    write_output(out, lambda fh: fh.write(buf.getvalue()))
    return out
