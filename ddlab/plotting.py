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


def reverse_paths_figure(times, paths, exact_at, state_labels=None, num_shown: int = 5,
                         paths_title: str = "reverse paths", hist_title: str | None = None):
    """Lesson 2's exact reverse paths: a few paths, and the histograms of all of them.

    ``times`` is the ascending time grid (T,) and ``paths`` the states, shape (N, T), with
    ``paths[:, k]`` the states at ``times[k]`` (as ``ddlab.paths.reverse_paths`` returns them).
    ``exact_at`` maps a time t on the grid to the exact marginal p_t (n,), drawn as black ticks
    over the path frequencies at t. The left panel draws the first ``num_shown`` paths from right
    to left (reverse time), offset vertically to separate them. Returns ``(fig, (ax_paths, ax_hist))``.
    """
    import numpy as np
    import torch

    times = torch.as_tensor(times, dtype=torch.float64)
    paths = np.asarray(torch.as_tensor(paths))
    check_times = list(exact_at)
    n = len(np.asarray(torch.as_tensor(exact_at[check_times[0]])))
    labels = [str(x) for x in range(n)] if state_labels is None else list(state_labels)
    fig, (ax1, ax2) = figure(1, 2)
    for k in range(min(num_shown, len(paths))):
        ax1.step(times.numpy(), paths[k] + 0.06 * (k - (num_shown - 1) / 2), where="post", lw=1.5)
    ax1.set(xlabel="time $t$ (paths are drawn from right to left)",
            ylabel="state (offset to separate paths)", yticks=range(n), yticklabels=labels,
            xlim=(float(times[-1]) + 0.02, float(times[0]) - 0.02), title=paths_title)
    width = 0.8 / len(check_times)
    for j, t in enumerate(check_times):
        c = int(torch.argmin((times - float(t)).abs()))
        freq = np.bincount(paths[:, c], minlength=n) / len(paths)
        xs = np.arange(n) + (j - (len(check_times) - 1) / 2) * width
        ax2.bar(xs, freq, width, color=PALETTE[j % len(PALETTE)], alpha=0.7, label=f"t = {t:g}")
        ax2.plot(xs, np.asarray(torch.as_tensor(exact_at[t])), "k_", ms=8, mew=2)
    ax2.plot([], [], "k_", ms=8, mew=2, label=r"exact $p_t$")
    ax2.set(xticks=range(n), xticklabels=labels, xlabel="state", ylabel="frequency",
            title=hist_title or f"{len(paths)} reverse paths have the forward marginals")
    ax2.legend(loc="upper center")
    return fig, (ax1, ax2)


__all__ += ["reverse_paths_figure"]
