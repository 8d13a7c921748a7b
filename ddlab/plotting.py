"""One figure style for the whole course, and the helper that saves figures (every lesson).

``figure(...)`` opens a figure of the course size (about 7 x 3.5 in) with the colour-blind-safe
Okabe-Ito palette; ``save_figure(fig, "01_name")`` writes ``figures/01_name.png`` at the
repository root (or under ``$DDLAB_FIGURES``) so that README and lessons show the same image.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt

# Okabe & Ito (2008): distinguishable under the common forms of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
FIGSIZE = (7.0, 3.5)
CMAP = "viridis"

STYLE = {
    "figure.figsize": FIGSIZE,
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "savefig.bbox": "tight",
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "image.cmap": CMAP,
}


def use_style() -> None:
    """Apply the course style to matplotlib globally (lessons call this once in setup)."""
    mpl.rcParams.update(STYLE)


def figure(nrows: int = 1, ncols: int = 1, width: float = FIGSIZE[0], height: float = FIGSIZE[1],
           **kwargs):
    """``plt.subplots`` in the course style and size; returns (fig, axes)."""
    use_style()
    return plt.subplots(nrows, ncols, figsize=(width, height), constrained_layout=True, **kwargs)


def figures_dir() -> Path:
    """Where figures go: ``$DDLAB_FIGURES``, else ``figures/`` beside the first ``lessons/`` or
    ``ddlab/`` found walking up from the working directory, else the package's repository."""
    env = os.environ.get("DDLAB_FIGURES")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in [here, *here.parents]:
        if (d / "figures").is_dir() and ((d / "lessons").is_dir() or (d / "ddlab").is_dir()):
            return d / "figures"
    return Path(__file__).resolve().parent.parent / "figures"


def save_figure(fig, name: str) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` and return the path.

    ``name`` is the lesson number and a short name, e.g. ``"01_marginals"``.
    """
    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"name must be a bare file stem like '01_marginals', got {name!r}")
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    # Fixed metadata keeps the PNG bytes stable between runs (no timestamp).
    fig.savefig(path, metadata={"Software": None})
    return path


__all__ = ["PALETTE", "FIGSIZE", "CMAP", "use_style", "figure", "figures_dir", "save_figure"]
