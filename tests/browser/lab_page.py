"""What a reader does with a lesson in JupyterLab, as Playwright steps (the browser test).

Open a notebook, wait for its kernel, Run > Run All Cells, wait until every cell has run, then find
the sliders and dropdowns in the outputs, move each one, and wait for the output beside it to
change. ``page_problems`` lists everything on the page that a reader would see as broken:
tracebacks, widget errors, kernel dialogs, cells left unrun; ``log_console_problems`` adds the
errors that JupyterLab sends to its log console.
"""

from __future__ import annotations

import re
import time

# The toolbar's execution indicator says "idle" only once a kernel is connected and quiet.
_KERNEL_READY = """() => {
    const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
    const k = document.querySelector('.jp-Toolbar-kernelName');
    return !!(s && s.dataset.status === 'idle' && k && !/No Kernel/.test(k.textContent));
}"""

# Run All is done when the kernel is idle and no prompt shows [*] (queued or running).
_RUN_DONE = """() => {
    const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
    const busy = [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
        .some(p => p.textContent.includes('*'));
    return !!(s && s.dataset.status === 'idle' && !busy);
}"""

_ANY_QUEUED = """() => [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')]
    .some(p => p.textContent.includes('*'))"""

# What a code cell's output shows, minus the controls themselves: image sources (hashed in the
# page, so the comparison stays small) and the text of outputs and of ipywidgets Output areas.
_CELL_SIGNATURE = """(cell) => {
    const hash = (s) => { let h = 0; for (let i = 0; i < s.length; i++) { h = (h * 31 + s.charCodeAt(i)) | 0; } return s.length + ':' + h; };
    const area = cell.querySelector('.jp-Cell-outputArea');
    if (!area) return {images: [], text: ''};
    const images = [...area.querySelectorAll('img')].map(img => hash(img.src || ''));
    const texts = [...area.querySelectorAll('.jp-RenderedText, .jp-RenderedHTMLCommon, .jp-RenderedLatex, .jp-RenderedSVG')]
        .map(e => e.textContent);
    return {images: images, text: texts.join('\\n')};
}"""

# Words that mark an error in an output, on stderr or in the log console (warnings pass).
ERROR_TEXT = re.compile(r"Traceback|\b\w*(Error|Exception)\b")
# Texts that ipywidgets and JupyterLab show in place of an output they could not display.
WIDGET_ERROR_TEXT = ("Error displaying widget", "Error rendering output", "Failed to load model",
                     "Model not found", "Could not render content")


def open_notebook(page, url: str, timeout_s: float) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_s * 1000)
    page.wait_for_function(_KERNEL_READY, timeout=timeout_s * 1000)


def run_all_cells(page, timeout_s: float) -> None:
    """Run > Run All Cells from the menu bar, then wait for the last cell to finish."""
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    # The first [*] can take a moment to appear; a notebook fast enough to finish before we look
    # is caught by the unrun-cell check in page_problems.
    try:
        page.wait_for_function(_ANY_QUEUED, timeout=5000)
    except Exception:  # noqa: BLE001 - Playwright's TimeoutError; see the comment above
        pass
    page.wait_for_function(_RUN_DONE, timeout=timeout_s * 1000, polling=250)
    settle(page)


def settle(page, quiet_s: float = 0.6, timeout_s: float = 10.0) -> None:
    """Wait until the kernel is idle and the notebook's DOM has stopped changing for quiet_s."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        page.wait_for_function(_RUN_DONE, timeout=timeout_s * 1000, polling=100)
        now = page.evaluate("() => document.querySelector('.jp-Notebook').innerHTML.length")
        if now == last:
            return
        last = now
        page.wait_for_timeout(quiet_s * 1000)


def code_cells(page):
    return page.locator(".jp-Notebook .jp-Cell")


def widget_cells(page) -> list[int]:
    """Indices (among all cells) of the cells whose outputs hold a slider or a dropdown."""
    return page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')]
        .map((c, i) => c.querySelector('.jp-Cell-outputArea .widget-slider .noUi-handle, '
                                       + '.jp-Cell-outputArea .widget-dropdown select') ? i : -1)
        .filter(i => i >= 0)""")


def cell_signature(page, index: int) -> dict:
    return code_cells(page).nth(index).evaluate(_CELL_SIGNATURE)


def label_of(widget) -> str:
    """The description a reader sees beside a control ("" when it has none)."""
    lab = widget.locator("label.widget-label")
    return (lab.first.text_content() or "").strip() if lab.count() else ""


def controls_in_cell(page, index: int) -> list[tuple[str, object]]:
    """(kind, locator of the widget box) for every enabled slider handle and dropdown in a cell."""
    cell = code_cells(page).nth(index)
    found = []
    sliders = cell.locator(".jp-Cell-outputArea .widget-slider")
    for k in range(sliders.count()):
        box = sliders.nth(k)
        if box.locator(".noUi-handle").count() and not box.locator("[disabled]").count():
            found.append(("slider", box))
    drops = cell.locator(".jp-Cell-outputArea .widget-dropdown")
    for k in range(drops.count()):
        box = drops.nth(k)
        if not box.locator("select").first.is_disabled():
            found.append(("dropdown", box))
    return found


def move(page, kind: str, box) -> tuple[str, str]:
    """Move a control the way a reader would; return its value before and after.

    A slider handle is focused and sent End (or Home when it already sits at its maximum), the
    keyboard path that noUiSlider, the slider ipywidgets 8 draws, supports. A dropdown gets the
    next option (the first, from the last).
    """
    if kind == "slider":
        handle = box.locator(".noUi-handle").first
        before = handle.get_attribute("aria-valuenow")
        at_max = before == handle.get_attribute("aria-valuemax")
        handle.scroll_into_view_if_needed()
        handle.focus()
        page.keyboard.press("Home" if at_max else "End")
        page.wait_for_timeout(100)
        return before, handle.get_attribute("aria-valuenow")
    select = box.locator("select").first
    values = select.evaluate("s => [...s.options].map(o => o.value)")
    before = select.input_value()
    target = values[(values.index(before) + 1) % len(values)] if len(values) > 1 else before
    select.scroll_into_view_if_needed()
    select.select_option(target)
    return before, select.input_value()


def wait_for_change(page, index: int, before: dict, timeout_s: float) -> dict:
    """Poll the cell's output until it differs from ``before`` (images first), then settle.

    Returns the new signature; on timeout returns the unchanged one, and the caller fails.
    """
    deadline = time.monotonic() + timeout_s
    now = before
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        now = cell_signature(page, index)
        if now != before:
            settle(page)
            return cell_signature(page, index)
    return now


def page_problems(page) -> list[str]:
    """Everything on the page that a reader would see as broken, as readable lines."""
    problems = []
    # 1. Tracebacks and error outputs in any cell (stderr outputs that are only warnings pass).
    for text in page.locator(
            ".jp-Notebook [data-mime-type='application/vnd.jupyter.stderr']").all_text_contents():
        if ERROR_TEXT.search(text):
            problems.append("error output in a cell:\n" + text.strip()[-1500:])
    # 2. Outputs that ipywidgets or Lab could not display.
    body = page.locator(".jp-Notebook").inner_text()
    for phrase in WIDGET_ERROR_TEXT:
        if phrase in body:
            i = body.index(phrase)
            problems.append(f"{phrase!r} on the page: ...{body[max(0, i - 100):i + 300]}...")
    # 3. Code cells that did not run (Run All stops at the first error).
    prompts = page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')]
        .map(c => [c.querySelector('.jp-InputPrompt')?.textContent.trim() || '',
                   (c.querySelector('.cm-content')?.textContent || '').trim().length])""")
    unrun = [i for i, (prompt, length) in enumerate(prompts)
             if length and not re.fullmatch(r"\[\d+\]:", prompt)]
    if unrun:
        problems.append(f"code cells {unrun} (0-based among code cells) did not run; their "
                        f"prompts are {[prompts[i][0] for i in unrun]}")
    # 4. A dialog over the page (a dead kernel, a failed save, a missing kernel).
    for text in page.locator(".jp-Dialog").all_text_contents():
        problems.append("dialog on the page: " + text.strip()[:500])
    return problems


def log_console_problems(page) -> list[str]:
    """Errors in the log console, where JupyterLab puts a widget callback's traceback (it belongs
    to no cell, so it never shows in the notebook). Opening the console covers the notebook, so
    call this last."""
    item = page.locator(".jp-LogConsoleStatusItem")
    if not item.count() or not item.first.is_visible():
        return []
    title = item.first.locator("[title]").first.get_attribute("title") or ""
    m = re.search(r"(\d+) log entr", title)
    if not m or int(m.group(1)) == 0:
        return []
    item.first.click()
    panel = page.locator(".jp-LogConsolePanel")
    panel.first.wait_for(timeout=5000)
    page.wait_for_timeout(300)
    text = panel.first.inner_text()
    if ERROR_TEXT.search(text):
        return ["the log console holds an error (a widget callback raised?):\n" + text[-2000:]]
    return []
