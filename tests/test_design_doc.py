"""docs/design.md stays true: its layout names the modules that exist, its table of exact twins
names functions that exist, and no module imports another module's private names (as it says).
Each check is run once on a deliberately wrong input, so it can fail."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "design.md").read_text()


def layout_modules(doc: str) -> set[str]:
    """Module paths (``ddlab/x.py``, ``ddlab/text/y.py``) named in the layout code block."""
    block = doc.split("```")[1]
    out, package = set(), "ddlab"
    for line in block.splitlines():
        if re.match(r"\s+text/", line):
            package = "ddlab/text"
        for name in re.findall(r"\b([a-z_]+\.py)\b", line):
            if name == "__init__.py":
                continue
            indent = len(line) - len(line.lstrip())
            out.add(f"{package if indent > 2 else 'ddlab'}/{name}")
    return out


def real_modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / "ddlab").rglob("*.py")
            if p.name != "__init__.py"}


def twin_names(doc: str) -> set[str]:
    table = doc.split("### Where the exact twin")[1].split("###")[0]
    return set(re.findall(r"`((?:text\.)?[a-z_]+\.[A-Za-z_]+(?:\.[a-z_]+)?)", table))


def resolve(dotted: str):
    parts = dotted.split(".")
    mod_parts = parts[:2] if parts[0] == "text" else parts[:1]
    obj = importlib.import_module("ddlab." + ".".join(mod_parts))
    for p in parts[len(mod_parts):]:
        obj = getattr(obj, p)
    return obj


def private_imports(src: str) -> list[str]:
    """``from .module import _name`` (or ``from ddlab.x import _name``) in a module's source."""
    bad = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ddlab")):
            bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return bad


def test_layout_lists_every_module_and_only_real_ones():
    assert layout_modules(DOC) == real_modules()
    assert layout_modules(DOC.replace("losses.py", "lossez.py")) != real_modules()


def test_the_exact_twins_exist():
    names = twin_names(DOC)
    assert len(names) >= 15, names
    for name in names:
        if name.startswith("rm."):
            import ddlab
            assert hasattr(ddlab.RateMatrix, name.split(".")[1]), name
        else:
            assert callable(resolve(name)), name
    with pytest.raises(AttributeError):
        resolve("losses.no_such_function")


def test_no_module_imports_a_private_name_of_another():
    bad = {str(p.relative_to(ROOT)): private_imports(p.read_text())
           for p in (ROOT / "ddlab").rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}
    assert private_imports("from .sampling import _step_probs\n") == ["sampling._step_probs"]
