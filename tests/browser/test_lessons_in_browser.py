"""Every lesson with widgets, run by a reader in JupyterLab in headless Chromium.

For each lesson under lessons/ whose code uses ipywidgets, the test opens it in a JupyterLab that
it starts itself (loopback, random token, throwaway Jupyter directories, a scratch copy of the
lessons with their outputs cleared), clicks Run > Run All Cells, waits for the kernel to go idle,
then moves every slider and dropdown once and requires the plot beside it to change. It fails on
any traceback, widget error, unrun cell, kernel dialog, log-console error or JavaScript error, and
saves what the reader sees to tests/browser/screenshots/ (git-ignored) for a person to look at.

Run it with ``make test-browser`` (which installs Chromium and Playwright when missing) or
``pytest tests/browser`` once they are installed. It skips, saying why, only when no Chromium
executable can be found. Environment knobs: ``DDLAB_CHROMIUM`` (the browser; default
/usr/bin/chromium), ``DDLAB_BROWSER_LESSONS`` (another folder of notebooks, to test the harness
itself), ``DDLAB_BROWSER_SCREENSHOTS`` (where screenshots go).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

import lab_page
from lab_server import running_lab

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LESSONS = Path(os.environ.get("DDLAB_BROWSER_LESSONS", REPO / "lessons")).resolve()
SHOTS = Path(os.environ.get("DDLAB_BROWSER_SCREENSHOTS", HERE / "screenshots")).resolve()
VIEWPORT = {"width": 1280, "height": 1000}
RUN_ALL_TIMEOUT_S = 240   # a lesson runs in about a minute on 2 CPU cores; the browser adds little
CHANGE_TIMEOUT_S = 60     # one widget callback recomputes and redraws one figure
# Console errors that are not the lesson's fault (none known today; add with a reason).
CONSOLE_ALLOW = ()


def uses_widgets(nb_path: Path) -> bool:
    """True when some code cell of the notebook uses ipywidgets."""
    nb = json.loads(nb_path.read_text())
    return any(cell.get("cell_type") == "code" and "ipywidgets" in "".join(cell["source"])
               for cell in nb.get("cells", []))


def widget_lessons(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.glob("[0-9]*.ipynb")) if uses_widgets(p)]


WIDGET_LESSONS = widget_lessons(LESSONS)


def chromium_executable() -> str | None:
    """$DDLAB_CHROMIUM when set (and nothing else), else Debian's /usr/bin/chromium or PATH."""
    env = os.environ.get("DDLAB_CHROMIUM")
    candidates = [env] if env else ["/usr/bin/chromium", shutil.which("chromium"),
                                    shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def scratch_copy(src: Path, dest: Path) -> Path:
    """Copy the lessons to dest/lessons with outputs and execution counts cleared, and the
    figures beside them to dest/figures.

    Cleared, so that a cell the browser never ran shows an empty prompt (and old images cannot
    stand in for new ones); a copy, so that nothing the page does reaches the repository. The
    figures come along because lesson Markdown shows them (../figures/NN_name.png), and the
    kernel's save_figure then rewrites the copies, not the repository's.
    """
    (dest / "lessons").mkdir(parents=True)
    figures = src.parent / "figures"
    if figures.is_dir():
        shutil.copytree(figures, dest / "figures")
    else:
        (dest / "figures").mkdir()
    for item in src.iterdir():
        if item.name.startswith(".") or item.name == "__pycache__":
            continue
        target = dest / "lessons" / item.name
        if item.suffix == ".ipynb":
            nb = json.loads(item.read_text())
            for cell in nb.get("cells", []):
                if cell.get("cell_type") == "code":
                    cell["outputs"], cell["execution_count"] = [], None
            nb.get("metadata", {}).pop("widgets", None)
            target.write_text(json.dumps(nb, indent=1))
        elif item.is_dir():
            shutil.copytree(item, target)
        else:
            shutil.copy2(item, target)
    return dest


@pytest.fixture(scope="module")
def chromium():
    path = chromium_executable()
    if path is None:
        where = os.environ.get("DDLAB_CHROMIUM") or "/usr/bin/chromium and PATH"
        pytest.skip(f"Chromium not found (looked at {where}): install Debian's package with "
                    "`apt-get install chromium` (`make test-browser` tries that as root)")
    return path


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    root = scratch_copy(LESSONS, tmp_path_factory.mktemp("lab"))
    # The kernel imports the working tree's ddlab, as tests/conftest.py makes the unit tests do,
    # whatever state the environment's (editable) install is in.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with running_lab(root, env={"DDLAB_FIGURES": str(root / "figures"),
                                "PYTHONPATH": path}) as server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium, lab):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright's Python package: "
                    "pip install -e '.[browser]' (never `playwright install`: it uses Chromium "
                    "from the system)", pytrace=False)
    with sync_playwright() as p:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=chromium,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def exercise_lesson(page, lab, notebook: str, shots: Path,
                    change_timeout_s: float = CHANGE_TIMEOUT_S) -> tuple[list[str], dict]:
    """Run one notebook (path under the served root) as a reader would; return (problems,
    timings in seconds)."""
    problems, times, t0 = [], {}, time.monotonic()
    stem = Path(notebook).stem
    lab_page.open_notebook(page, lab.url(notebook), timeout_s=90)
    times["open"] = time.monotonic() - t0
    lab_page.run_all_cells(page, timeout_s=RUN_ALL_TIMEOUT_S)
    times["run_all"] = time.monotonic() - t0 - times["open"]
    problems += lab_page.page_problems(page)

    cells = lab_page.widget_cells(page)
    if not cells:
        problems.append("no slider or dropdown rendered on the page, though the lesson uses "
                        "ipywidgets (is the JupyterLab widgets extension, jupyterlab_widgets, "
                        "installed?)")
    moved = 0
    for index in cells:
        for kind, box in lab_page.controls_in_cell(page, index):
            label = lab_page.label_of(box) or "(no label)"
            before = lab_page.cell_signature(page, index)
            old, new = lab_page.move(page, kind, box)
            if old == new:
                problems.append(f"cell {index}: the {kind} {label!r} did not move (value {old})")
                continue
            after = lab_page.wait_for_change(page, index, before, change_timeout_s)
            moved += 1
            if after == before:
                problems.append(f"cell {index}: moving the {kind} {label!r} from {old} to {new} "
                                f"left the output unchanged after {change_timeout_s:.0f} s")
            elif before["images"] and after["images"] == before["images"]:
                problems.append(f"cell {index}: moving the {kind} {label!r} from {old} to {new} "
                                "changed only the text; the plot stayed the same")
    times["widgets"] = time.monotonic() - t0 - times["open"] - times["run_all"]
    times["controls"] = moved
    problems += lab_page.page_problems(page)

    shots.mkdir(parents=True, exist_ok=True)
    for k, index in enumerate(cells):
        cell = lab_page.code_cells(page).nth(index)
        cell.scroll_into_view_if_needed()
        cell.screenshot(path=str(shots / f"{stem}.widget{k + 1}.png"))
    if cells:  # the page as the reader sees it, scrolled to the first interactive cell
        lab_page.code_cells(page).nth(cells[0]).evaluate("c => c.scrollIntoView()")
    page.screenshot(path=str(shots / f"{stem}.png"))
    problems += lab_page.log_console_problems(page)
    return problems, times


@contextlib.contextmanager
def reader_page(browser, lab):
    """A fresh page that records JavaScript errors and failed requests into the yielded list;
    closed afterwards, with the kernels it started."""
    page = browser.new_page(viewport=VIEWPORT)
    errors = []
    page.on("pageerror", lambda e: errors.append(f"uncaught JavaScript error: {e}"))
    page.on("console", lambda m: errors.append(f"console error: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            and not any(a in m.text for a in CONSOLE_ALLOW) else None)
    # A failed request names its address (the console only says "Failed to load resource").
    page.on("response", lambda r: errors.append(f"HTTP {r.status} for {r.url.split('?')[0]}")
            if r.status >= 400 else None)
    try:
        yield page, errors
    finally:
        page.close()
        lab.shutdown_kernels()


@pytest.mark.parametrize("lesson", WIDGET_LESSONS or [None],
                         ids=[p.stem for p in WIDGET_LESSONS] or ["no-widget-lessons"])
def test_lesson_in_browser(lesson, chromium, request):
    if lesson is None:
        pytest.fail(f"no lesson in {LESSONS} uses ipywidgets; docs/design.md promises sliders in "
                    "lessons 1 and 2, so this test has nothing to check", pytrace=False)
    # Started only now, so that the two early exits above cost no server and no browser.
    lab, browser = request.getfixturevalue("lab"), request.getfixturevalue("browser")
    for old in SHOTS.glob(f"{lesson.stem}.*png"):  # no stale picture from an earlier run
        old.unlink()
    problems = []
    with reader_page(browser, lab) as (page, js_errors):
        try:
            problems, times = exercise_lesson(page, lab, f"lessons/{lesson.name}", SHOTS)
            print(f"{lesson.name}: " + ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in times.items()))
        except Exception as exc:  # keep what the reader would have seen, then fail with the cause
            SHOTS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):  # a crashed page cannot be photographed
                page.screenshot(path=str(SHOTS / f"{lesson.stem}.FAILED.png"))
            problems.append(f"{type(exc).__name__}: {exc}")
            problems.append("end of the JupyterLab log:\n" + lab.log_tail())
    problems += js_errors
    if problems:
        pytest.fail(f"{lesson.name} in the browser:\n\n" + "\n\n".join(problems), pytrace=False)


# A notebook with one fault of each kind the test looks for. If a JupyterLab or ipywidgets
# upgrade renamed what the checks look at, the lesson tests would pass blind; this one would not.
BROKEN_CELLS = [
    "import ipywidgets as widgets\nimport matplotlib.pyplot as plt\nfrom IPython.display import display",
    # A slider whose callback raises: the traceback goes to the log console, the plot stays.
    "out = widgets.Output()\nslider = widgets.IntSlider(value=2, min=1, max=5, description='n')\n"
    "def redraw(change):\n    raise RuntimeError('callback failed')\n"
    "with out:\n    plt.bar(range(2), [1, 2]); plt.show()\n"
    "slider.observe(redraw, names='value')\nwidgets.VBox([slider, out])",
    # A widget view whose model does not exist.
    "display({'application/vnd.jupyter.widget-view+json': {'model_id': 'no-such-model', "
    "'version_major': 2, 'version_minor': 0}}, raw=True)",
    "1 / 0",
    "print('never reached')",
]


def test_the_checks_see_each_kind_of_fault(chromium, request, tmp_path):
    lab, browser = request.getfixturevalue("lab"), request.getfixturevalue("browser")
    folder = lab.root / "harness_check"
    folder.mkdir(exist_ok=True)
    cells = [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [],
              "execution_count": None} for src in BROKEN_CELLS]
    (folder / "broken.ipynb").write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}}}))
    with reader_page(browser, lab) as (page, _):
        problems, _ = exercise_lesson(page, lab, "harness_check/broken.ipynb", tmp_path,
                                      change_timeout_s=5)
    report = "\n".join(problems)
    for expected in ("ZeroDivisionError", "did not run", "left the output unchanged",
                     "Error displaying widget", "the log console holds an error",
                     "callback failed"):
        assert expected in report, f"the browser checks missed {expected!r}; they saw:\n{report}"
