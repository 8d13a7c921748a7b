"""Shared by tests/test_exercises_*.py: read a lesson's build-it exercise out of its .ipynb.

The solution is the fenced python block of the lesson's ``<details>`` cell, the check is the
lesson's own check cell; running one through the other returns what the check prints (PASS,
FAIL or "not attempted yet"), so the tests follow the notebooks as they are edited.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

LESSONS = Path(__file__).resolve().parents[1] / "lessons"


def _cells(name):
    return json.loads((LESSONS / name).read_text())["cells"]


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _solution(name, func):
    """The fenced python block of the <details> cell that defines ``func``."""
    for cell in _cells(name):
        text = _source(cell)
        if cell["cell_type"] == "markdown" and "<details>" in text and f"def {func}(" in text:
            return re.search(r"```python\n(.*?)```", text, re.S).group(1)
    raise AssertionError(f"no <details> solution defining {func} in {name}")


def _check_cell(name, checker):
    for cell in _cells(name):
        if cell["cell_type"] == "code" and f"def {checker}(" in _source(cell):
            return _source(cell)
    raise AssertionError(f"no check cell defining {checker} in {name}")


def _run_check(name, checker, func_source):
    """Define the reader's function from ``func_source``, run the check cell, return what it prints.

    The namespace holds what the lessons' setup cells import (torch, numpy as np, ddlab and its
    sequences module as S), so a solution sees what it would see in the notebook.
    """
    import numpy as np
    import torch

    import ddlab
    from ddlab import sequences as S
    ns = {"torch": torch, "np": np, "ddlab": ddlab, "S": S}
    exec(func_source, ns)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(_check_cell(name, checker), ns)
    return out.getvalue().strip()
