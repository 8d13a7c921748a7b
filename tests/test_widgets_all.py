"""Every interactive view over its whole range, and every lesson's widget callback thin.

Part 1 drives each entry of ``ddlab.widgets.WIDGETS = {name: (callback, {param: range})}`` in a
plain process with the Agg backend: 11 evenly spaced values on each slider ``(lo, hi)`` (integers
when both ends are) times every option of each dropdown ``[...]``. Every call must return without
raising, and every number it returns (floats, tensors, arrays, nested in dicts, lists or tuples)
must be finite; there must be at least one. The figure it returns is also rendered once per
dropdown combination at the top of each slider, since a bad title or label only fails on drawing,
which in the browser happens after the callback has returned.

Part 2 reads the lessons' code cells and finds every ipywidgets callback (``interact``,
``interactive``, ``interact_manual``, ``interactive_output``, ``@interact``, ``.observe``,
``.on_click``). Each must call a function registered in WIDGETS and hold no logic of its own
(no loops, branches or comprehensions, a handful of statements), so that part 1 and the browser
test together cover what a reader can do with a slider. Every WIDGETS entry must be used by some
lesson. Neither part passes vacuously: an empty or missing registry fails, and so does a lesson
that imports ipywidgets in which no callback is found.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import numbers
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tests.conftest import notebook_cells, without_magics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LESSONS = REPO / "lessons"
POINTS = 11            # values per continuous slider
MAX_STATEMENTS = 6     # a thin callback: build arguments, call one view, show, return

try:
    from ddlab import widgets as _widgets_module
    WIDGETS = getattr(_widgets_module, "WIDGETS", None)
    IMPORT_ERROR = None if WIDGETS is not None else "ddlab.widgets has no WIDGETS"
except Exception as exc:  # noqa: BLE001 - reported by test_registry_exists_and_is_well_formed
    WIDGETS, IMPORT_ERROR = None, f"import ddlab.widgets failed: {type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- the grid of values

def axis_values(param: str, spec) -> list:
    """The values a test gives one parameter: a slider ``(lo, hi)`` -> 11 points, a dropdown
    ``[options]`` -> every option. Anything else is a malformed registry entry."""
    if isinstance(spec, tuple):
        if len(spec) != 2 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                     for v in spec) or not spec[0] < spec[1]:
            raise ValueError(f"slider {param!r}: expected (lo, hi) numbers with lo < hi, "
                             f"got {spec!r}")
        lo, hi = spec
        if isinstance(lo, numbers.Integral) and isinstance(hi, numbers.Integral):
            return sorted({int(round(v)) for v in np.linspace(lo, hi, POINTS)})
        return [float(v) for v in np.linspace(lo, hi, POINTS)]
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"dropdown {param!r}: expected a non-empty list of options, got []")
        return list(spec)
    raise ValueError(f"parameter {param!r}: expected (lo, hi) for a slider or a list for a "
                     f"dropdown, got {type(spec).__name__} {spec!r}")


def dropdown_combinations(ranges: dict) -> list[dict]:
    drops = {k: axis_values(k, v) for k, v in ranges.items() if isinstance(v, list)}
    return [dict(zip(drops, combo)) for combo in itertools.product(*drops.values())]


def slider_grid(ranges: dict) -> list[dict]:
    sliders = {k: axis_values(k, v) for k, v in ranges.items() if not isinstance(v, list)}
    return [dict(zip(sliders, combo)) for combo in itertools.product(*sliders.values())]


def numbers_in(value, where: str = "result"):
    """Yield (where, float64 array) for every number inside a callback's return value."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes, Figure)):
        return
    if isinstance(value, numbers.Number):
        yield where, np.asarray(complex(value) if isinstance(value, complex) else float(value))
    elif isinstance(value, torch.Tensor):
        if value.dtype != torch.bool:
            yield where, value.detach().cpu().to(torch.complex128 if value.is_complex()
                                                 else torch.float64).numpy()
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "iufc":
            yield where, value.astype(np.complex128 if value.dtype.kind == "c" else np.float64)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from numbers_in(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from numbers_in(v, f"{where}[{i}]")


def figures_in(value) -> list[Figure]:
    if isinstance(value, Figure):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in figures_in(v)]
    if isinstance(value, (list, tuple)):
        return [f for v in value for f in figures_in(v)]
    return []


def check_call(name, fn, kwargs, render: bool) -> None:
    try:
        out = fn(**kwargs)
        found = list(numbers_in(out))
        assert found, f"{name}({kwargs}) returned no numbers: {out!r}"
        for where, arr in found:
            assert np.all(np.isfinite(arr)), f"{name}({kwargs}): {where} is not finite: {arr}"
        if render:
            figs = figures_in(out) or [plt.gcf()]
            for fig in figs:
                assert fig.axes, f"{name}({kwargs}) drew a figure without axes"
                fig.canvas.draw()  # mathtext and layout errors only show when drawing
    finally:
        plt.close("all")


# ----------------------------------------------------------------------------- part 1: the views

def test_registry_exists_and_is_well_formed():
    assert IMPORT_ERROR is None, IMPORT_ERROR
    assert isinstance(WIDGETS, dict) and WIDGETS, f"WIDGETS must be a non-empty dict, got {WIDGETS!r}"
    for name, entry in WIDGETS.items():
        assert isinstance(entry, tuple) and len(entry) == 2, \
            f"WIDGETS[{name!r}] must be (callback, {{param: range}}), got {entry!r}"
        fn, ranges = entry
        assert callable(fn), f"WIDGETS[{name!r}][0] is not callable: {fn!r}"
        assert isinstance(ranges, dict) and ranges, f"WIDGETS[{name!r}] has no parameters"
        for param, spec in ranges.items():
            axis_values(param, spec)  # raises on a malformed range
        # Every parameter must be one the callback accepts.
        sig = inspect.signature(fn)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            unknown = set(ranges) - set(sig.parameters)
            assert not unknown, f"WIDGETS[{name!r}] ranges name {unknown}, not parameters of {fn}"


def _cases():
    """One test case per (view, dropdown combination), so pytest-xdist spreads the work."""
    if not WIDGETS:
        return [pytest.param(None, None, id="no-registry")]
    cases = []
    for name, (fn, ranges) in WIDGETS.items():
        try:
            combos = dropdown_combinations(ranges)
        except ValueError:
            combos = [{}]  # the registry test reports the malformed range
        for combo in combos:
            cid = name + ("-" + "-".join(map(str, combo.values())) if combo else "")
            cases.append(pytest.param(name, combo, id=cid))
    return cases


@pytest.mark.parametrize("name, dropdowns", _cases())
def test_view_over_its_range(name, dropdowns):
    assert WIDGETS, IMPORT_ERROR or "WIDGETS is empty: there is nothing to drive"
    fn, ranges = WIDGETS[name]
    grid = slider_grid(ranges)
    assert grid, f"WIDGETS[{name!r}] gave an empty grid"
    for k, sliders in enumerate(grid):
        # Render the figure once per dropdown combination, at the top of every slider.
        check_call(name, fn, {**dropdowns, **sliders}, render=(k == len(grid) - 1))


def test_checks_catch_a_bad_view():
    """The checks above fail on the faults they are for (so a pass means something)."""
    def nan_view(t=0.0):
        return {"p": torch.tensor([0.5, float("nan")])}

    def silent_view(t=0.0):
        plt.figure()
        return None

    def bad_title_view(t=0.0):
        fig, ax = plt.subplots()
        ax.set_title(r"$\bar\sigma = \frac{1}{$")  # unbalanced mathtext: fails only on draw
        return {"t": t, "fig": fig}

    with pytest.raises(AssertionError, match="not finite"):
        check_call("nan_view", nan_view, {"t": 0.5}, render=False)
    with pytest.raises(AssertionError, match="no numbers"):
        check_call("silent_view", silent_view, {"t": 0.5}, render=False)
    check_call("bad_title_view", bad_title_view, {"t": 0.5}, render=False)
    with pytest.raises(ValueError, match=r"\\bar\\sigma = \\frac\{1\}\{"):   # mathtext echoes it
        check_call("bad_title_view", bad_title_view, {"t": 0.5}, render=True)
    with pytest.raises(ValueError, match="lo < hi"):
        axis_values("t", (1.0, 0.0))
    with pytest.raises(ValueError, match="non-empty"):
        axis_values("kind", [])
    assert axis_values("n", (1, 5)) == [1, 2, 3, 4, 5]
    assert axis_values("t", (0.0, 1.0))[1] == pytest.approx(0.1)
    assert len(slider_grid({"a": (0.0, 1.0), "b": (0, 100), "k": ["x", "y"]})) == POINTS * POINTS


# ---------------------------------------------------------------- part 2: thin lesson callbacks

WIDGET_CALLS = {"interact", "interactive", "interact_manual", "interactive_output"}
EVENT_METHODS = {"observe", "on_click", "on_submit"}


def lesson_source(nb_path: Path) -> str:
    """All code cells of a notebook as one module; IPython magics and shell lines are dropped."""
    return "\n\n".join(without_magics(c) for c in notebook_cells(nb_path, "code"))


def _name(func: ast.expr) -> str | None:
    """The last name in a call target: ``ddlab.widgets.marginal_view`` -> "marginal_view"."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _registry_key(node: ast.expr) -> str | None:
    """``WIDGETS["view"][0]`` or ``WIDGETS["view"]`` -> "view"."""
    while isinstance(node, ast.Subscript):
        inner = node.value
        if _name(inner) == "WIDGETS" and isinstance(node.slice, ast.Constant):
            return node.slice.value
        node = inner
    return None


def find_callbacks(tree: ast.Module) -> list[tuple[int, str, ast.AST]]:
    """(line, how it is wired, callback node) for every widget callback in a lesson.

    The node is a FunctionDef, a Lambda, or the expression passed (a name that resolves to no
    function in the lesson, e.g. ``ddlab.widgets.marginal_view`` passed directly).
    """
    defs = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = []

    def resolve(expr):
        if isinstance(expr, ast.Call) and _name(expr.func) == "partial" and expr.args:
            return resolve(expr.args[0])
        if isinstance(expr, ast.Name) and expr.id in defs:
            return defs[expr.id]
        return expr

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if _name(target) in WIDGET_CALLS:
                    found.append((node.lineno, f"@{_name(target)}", node))
        if isinstance(node, ast.Call):
            how = _name(node.func)
            if how in WIDGET_CALLS and node.args:
                found.append((node.lineno, how, resolve(node.args[0])))
            elif how in WIDGET_CALLS:
                # interact(**kw) as a decorator factory is handled above; interact(f=...) here.
                for kw in node.keywords:
                    if kw.arg == "f":
                        found.append((node.lineno, how, resolve(kw.value)))
            elif isinstance(node.func, ast.Attribute) and how in EVENT_METHODS and node.args:
                found.append((node.lineno, f".{how}", resolve(node.args[0])))
    return found


def callback_problem(cb: ast.AST, registered: set[str]) -> str | None:
    """None when the callback is thin and calls a registered view; else what is wrong."""
    direct = _name(cb) if isinstance(cb, (ast.Name, ast.Attribute)) else _registry_key(cb)
    if direct is not None:
        return None if direct in registered else f"{direct!r} is not a function in WIDGETS"
    body = cb.body if isinstance(cb, (ast.FunctionDef, ast.AsyncFunctionDef)) else [cb]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # docstring
    called = set()
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if isinstance(node, ast.Call):
            called.add(_name(node.func))
            called.add(_registry_key(node.func))
        if isinstance(node, (ast.For, ast.While, ast.If, ast.IfExp, ast.Try, ast.ListComp,
                             ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return (f"it holds logic of its own ({type(node).__name__} at line "
                    f"{getattr(node, 'lineno', '?')}); move it into ddlab.widgets")
    statements = sum(isinstance(n, ast.stmt) for stmt in body for n in ast.walk(stmt))
    if statements > MAX_STATEMENTS:
        return (f"it has {statements} statements (at most {MAX_STATEMENTS}: call one view, show "
                "the figure); move the rest into ddlab.widgets")
    if not called & registered:
        return f"it calls none of the WIDGETS functions {sorted(registered)} (it calls {sorted(c for c in called if c)})"
    return None


@functools.lru_cache(maxsize=None)
def registered_names() -> frozenset:
    return frozenset(set(WIDGETS) | {getattr(fn, "__name__", "") for fn, _ in WIDGETS.values()})


def widget_lessons() -> list[Path]:
    return [p for p in sorted(LESSONS.glob("[0-9]*.ipynb")) if "ipywidgets" in lesson_source(p)]


def test_lesson_callbacks_are_thin_and_registered():
    assert WIDGETS, IMPORT_ERROR or "WIDGETS is empty"
    lessons = widget_lessons()
    assert lessons, (f"no lesson in {LESSONS} uses ipywidgets; docs/design.md promises sliders in "
                     "lessons 1 and 2")
    registered, used, problems = registered_names(), set(), []
    for path in lessons:
        with warnings.catch_warnings():  # a lesson's invalid escape is not this test's business
            warnings.simplefilter("ignore")
            tree = ast.parse(lesson_source(path), filename=path.name)
        callbacks = find_callbacks(tree)
        if not callbacks:
            problems.append(f"{path.name}: uses ipywidgets but no interact/observe callback was "
                            "found (a pattern this test does not know?)")
        for line, how, cb in callbacks:
            problem = callback_problem(cb, registered)
            if problem:
                problems.append(f"{path.name}, code line {line} ({how}): {problem}")
            used |= {_name(n.func) for n in ast.walk(cb) if isinstance(n, ast.Call)}
            used |= {_registry_key(n) for n in ast.walk(cb) if isinstance(n, ast.Subscript)}
            used.add(_name(cb) if isinstance(cb, (ast.Name, ast.Attribute)) else None)
    for key, (fn, _) in WIDGETS.items():
        if not {key, getattr(fn, "__name__", "")} & used:
            problems.append(f"WIDGETS[{key!r}] is used by no lesson callback, so no browser test "
                            "covers it: wire it to a slider or drop it")
    assert not problems, "\n".join(problems)


def test_callback_check_catches_fat_and_unregistered_callbacks():
    registered = {"marginal_view"}
    src = '''
import ipywidgets as widgets
from ipywidgets import interact
import ddlab

def good(kind, t):
    ddlab.widgets.marginal_view(kind=kind, t=t)
    plt.show()
interact(good, kind=["a"], t=(0.0, 1.0))

def fat(t):
    p = [ddlab.widgets.marginal_view(t=s) for s in range(3)]
    plt.show()
interact(fat, t=(0.0, 1.0))

@interact(t=(0.0, 1.0))
def unregistered(t):
    plt.plot([t])

slider = widgets.FloatSlider()
slider.observe(lambda change: ddlab.widgets.marginal_view(t=change["new"]), names="value")
slider.observe(lambda change: print(change), names="value")
interact(ddlab.widgets.marginal_view, t=(0.0, 1.0))
interact(ddlab.widgets.WIDGETS["marginal_view"][0], t=(0.0, 1.0))
interact(ddlab.widgets.other_view, t=(0.0, 1.0))
'''
    found = find_callbacks(ast.parse(src))
    verdicts = {line: callback_problem(cb, registered) for line, _, cb in found}
    assert len(found) == 8
    good = [line for line, v in verdicts.items() if v is None]
    bad = {line: v for line, v in verdicts.items() if v is not None}
    assert sorted(good) == [9, 21, 23, 24]
    assert "ListComp" in bad[14]
    assert "calls none" in bad[17]          # the decorator form, found at its def line
    assert "calls none" in bad[22]
    assert "not a function in WIDGETS" in bad[25]
