"""Small conveniences every lesson's setup cell uses (all lessons).

``lesson_scale()`` is the one size knob: "small" on a reader's CPU (what the committed lessons show),
"full" when a GPU is present, and "quick" under ``make test-lessons`` (nbval on a 2-core CI machine:
lessons whose real CPU setting takes minutes, such as lesson 9's training, shrink it; the others
treat "quick" as "small"). ``DDLAB_SCALE=quick|small|full`` overrides the choice.
``notebook_cells`` and ``without_magics`` read a lesson as plain Python, for the tests and for
``benchmarks/run_lesson.py`` (which runs a lesson where Jupyter is not installed).
"""

from __future__ import annotations

import json
import os

import torch

_SCALES = ("quick", "small", "full")


def lesson_scale() -> str:
    """"quick", "small" or "full": ``$DDLAB_SCALE`` if set, else "full" when CUDA is available,
    else "small". Only ``make test-lessons`` (and the browser test) set "quick"."""
    env = os.environ.get("DDLAB_SCALE")
    if env is not None:
        if env not in _SCALES:
            raise ValueError(f"DDLAB_SCALE must be one of {_SCALES}, got {env!r}")
        return env
    return "full" if torch.cuda.is_available() else "small"


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(seed: int = 0) -> str:
    """Seed torch, apply the figure style, and return the lesson scale. One call per lesson."""
    from .plotting import use_style
    torch.manual_seed(seed)
    use_style()
    scale = lesson_scale()
    if scale != "full" and not torch.cuda.is_available():
        # Toy tensors are tiny: a second thread only adds synchronisation, and under nbval two
        # lessons share the two cores of a CI machine. One thread is both faster and repeatable.
        torch.set_num_threads(1)
    return scale


def notebook_cells(path, kind: str) -> list[str]:
    """The sources of a notebook's cells of one kind ("code" or "markdown"), in order."""
    with open(path) as f:
        nb = json.load(f)
    return ["".join(c["source"]) for c in nb.get("cells", []) if c.get("cell_type") == kind]


def without_magics(code: str) -> str:
    """A code cell as plain Python: IPython magics and shell lines (% and !) become `pass`."""
    return "\n".join("pass" if line.lstrip().startswith(("%", "!")) else line
                     for line in code.splitlines())


__all__ = ["lesson_scale", "default_device", "setup", "notebook_cells", "without_magics"]
