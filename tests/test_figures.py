"""figures/ in sync with the lessons and README (``make figures`` rewrites it from the lessons).

* Every image that README.md or a lesson's Markdown shows (``![alt](path)``, reference-style
  links, ``<img src="path">``) exists, resolved from the file that shows it.
* Every ``save_figure(fig, "NAME")`` in a lesson's code has written ``figures/NAME.png``; the name
  starts with the lesson's number (``01_...`` in lesson 01) and no two lessons write the same file.
  An f-string name becomes a pattern (``f"05_kl_{kind}"`` -> ``05_kl_*``); any other expression
  cannot be traced and is reported.
* Every lesson saves at least one figure (LESSON_STYLE.md: one figure per idea).
* No PNG in figures/ is orphaned: each is written by some lesson or shown by README.

``figure_problems(root)`` returns the problems as sentences; the last test builds a small fake
repository with one problem of each kind and checks that every one is reported.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import warnings
from pathlib import Path

from tests.conftest import notebook_cells, without_magics

REPO = Path(__file__).resolve().parents[1]

_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_MD_REF_IMAGE = re.compile(r"!\[([^\]]*)\]\[([^\]]*)\]")
_MD_REF_DEF = re.compile(r"^\s{0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+[\"'(].*)?$", re.M)
_HTML_IMG = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.I)


def image_links(markdown: str) -> list[str]:
    """Image targets in Markdown text: inline, reference-style and HTML <img>, in order."""
    refs = {label.lower(): target for label, target in _MD_REF_DEF.findall(markdown)}
    links = _MD_IMAGE.findall(markdown) + _HTML_IMG.findall(markdown)
    for alt, label in _MD_REF_IMAGE.findall(markdown):
        target = refs.get((label or alt).lower())
        if target:
            links.append(target)
    return links


def is_local(link: str) -> bool:
    """A file in the repository, not a web address, an inline image or a notebook attachment."""
    return not re.match(r"^([a-z][a-z0-9+.-]*:|//|#)", link, re.I)


def saved_figure_names(code: str) -> tuple[list[str], list[str]]:
    """(names or glob patterns, untraceable call texts) of the save_figure calls in some code."""
    names, untraceable = [], []
    with warnings.catch_warnings():  # a lesson's invalid escape is not this test's business
        warnings.simplefilter("ignore")
        tree = ast.parse(without_magics(code))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called != "save_figure":
            continue
        arg = node.args[1] if len(node.args) > 1 else next(
            (k.value for k in node.keywords if k.arg == "name"), None)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names.append(arg.value)
        elif isinstance(arg, ast.JoinedStr):
            names.append("".join(v.value if isinstance(v, ast.Constant) else "*"
                                 for v in arg.values))
        else:
            untraceable.append(ast.unparse(node))
    return names, untraceable


def lessons(root: Path) -> list[Path]:
    return sorted((root / "lessons").glob("[0-9]*.ipynb"))


def figure_problems(root: Path) -> list[str]:
    """Every way in which figures/ and the files that show or write it disagree."""
    problems = []
    figures = root / "figures"
    pngs = {p.resolve() for p in figures.glob("*.png")} if figures.is_dir() else set()
    shown_by_readme = set()

    readme = root / "README.md"
    if not readme.is_file():
        problems.append("README.md is missing (pyproject.toml names it as the readme)")
    else:
        for link in filter(is_local, image_links(readme.read_text())):
            target = (root / link.split("#")[0]).resolve()
            shown_by_readme.add(target)
            if not target.is_file():
                problems.append(f"README.md shows {link}, which does not exist")

    written_by = {}   # pattern -> lesson
    for nb in lessons(root):
        number = nb.name.split("_")[0]
        for md in notebook_cells(nb, "markdown"):
            for link in filter(is_local, image_links(md)):
                if not (nb.parent / link.split("#")[0]).resolve().is_file():
                    problems.append(f"{nb.name} shows {link}, which does not exist")
        names = []
        for code in notebook_cells(nb, "code"):
            try:
                found, untraceable = saved_figure_names(code)
            except SyntaxError as exc:
                problems.append(f"{nb.name}: a code cell does not parse ({exc}); "
                                "its save_figure calls cannot be checked")
                continue
            names += found
            problems += [f"{nb.name}: {call} names its figure with an expression this test cannot "
                         "follow; use a literal name or an f-string" for call in untraceable]
        if not names:
            problems.append(f"{nb.name} saves no figure with ddlab.save_figure")
        for name in names:
            if not name.startswith(number + "_"):
                problems.append(f"{nb.name} saves {name!r}: figure names start with the lesson "
                                f"number, e.g. '{number}_{name}'")
            if name in written_by and written_by[name] != nb.name:
                problems.append(f"{nb.name} and {written_by[name]} both write figures/{name}.png")
            written_by.setdefault(name, nb.name)
            if not any(fnmatch.fnmatchcase(p.name, f"{name}.png") for p in pngs):
                problems.append(f"{nb.name} saves figures/{name}.png, which does not exist: "
                                "run `make figures`")

    for png in sorted(pngs):
        written = any(fnmatch.fnmatchcase(png.name, f"{name}.png") for name in written_by)
        if not written and png not in shown_by_readme:
            problems.append(f"figures/{png.name} is orphaned: no lesson writes it and README "
                            "does not show it; delete it or regenerate with `make figures`")
    return problems


# --------------------------------------------------------------------------------------- tests

def test_figures_in_sync_with_lessons_and_readme():
    problems = figure_problems(REPO)
    assert not problems, "figures/ is out of sync:\n" + "\n".join(problems)


def test_image_links_and_save_figure_parsing():
    md = ('Intro ![p_t over t](../figures/01_marginals.png "the marginals") and '
          '<img width="400" src="figures/02_reverse.png"> and ![ref][fig3] and '
          '![web](https://example.org/x.png)\n\n[fig3]: figures/03_se.png "title"\n')
    assert image_links(md) == ["../figures/01_marginals.png", "https://example.org/x.png",
                               "figures/02_reverse.png", "figures/03_se.png"]
    assert [is_local(x) for x in image_links(md)] == [True, False, True, True]
    assert not is_local("attachment:image.png") and not is_local("data:image/png;base64,AAAA")
    code = ('%matplotlib inline\nimport ddlab\nfig = None\n'
            'ddlab.save_figure(fig, "05_kl")\n'
            'ddlab.plotting.save_figure(fig, name="05_paths")\n'
            'for k in ["a"]:\n    save_figure(fig, f"05_kl_{k}")\n'
            'save_figure(fig, "05_" + k)\n')
    names, untraceable = saved_figure_names(code)
    assert names == ["05_kl", "05_paths", "05_kl_*"]
    assert untraceable == ["save_figure(fig, '05_' + k)"]


def _fake_notebook(path: Path, markdown: list[str], code: list[str]) -> None:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": m} for m in markdown]
    cells += [{"cell_type": "code", "metadata": {}, "source": c, "outputs": [],
               "execution_count": None} for c in code]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                "nbformat_minor": 5}))


def test_checker_reports_each_kind_of_problem(tmp_path):
    (tmp_path / "lessons").mkdir()
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("01_ok", "01_kl_uniform", "02_written", "99_orphan", "readme_only"):
        (figures / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "README.md").write_text("![a](figures/readme_only.png) ![b](figures/gone.png)\n")
    _fake_notebook(tmp_path / "lessons" / "01_a.ipynb",
                   ["![x](../figures/01_ok.png) ![y](../figures/01_missing_md.png)"],
                   ['ddlab.save_figure(fig, "01_ok")\nsave_figure(fig, f"01_kl_{kind}")',
                    'ddlab.save_figure(fig, "01_not_run")'])
    _fake_notebook(tmp_path / "lessons" / "02_b.ipynb", [],
                   ['save_figure(fig, "02_written")\nsave_figure(fig, "01_ok")\n'
                    'save_figure(fig, name)'])
    _fake_notebook(tmp_path / "lessons" / "03_c.ipynb", ["no figure here"], ["x = 1"])
    problems = "\n".join(figure_problems(tmp_path))
    expected = [
        "README.md shows figures/gone.png, which does not exist",
        "01_a.ipynb shows ../figures/01_missing_md.png, which does not exist",
        "01_a.ipynb saves figures/01_not_run.png, which does not exist",
        "02_b.ipynb saves '01_ok': figure names start with the lesson number",
        "02_b.ipynb and 01_a.ipynb both write figures/01_ok.png",
        "02_b.ipynb: save_figure(fig, name) names its figure with an expression",
        "03_c.ipynb saves no figure",
        "figures/99_orphan.png is orphaned",
    ]
    for sentence in expected:
        assert sentence in problems, f"not reported: {sentence}\n--- got:\n{problems}"
    assert problems.count("\n") + 1 == len(expected), problems
    for fine in ("01_kl_uniform", "readme_only.png is orphaned", "02_written.png is orphaned"):
        assert fine not in problems


def test_checker_requires_readme(tmp_path):
    (tmp_path / "lessons").mkdir()
    assert figure_problems(tmp_path) == ["README.md is missing (pyproject.toml names it as the "
                                         "readme)"]
