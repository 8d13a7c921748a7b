"""Run a lesson's code cells as one plain Python script, top to bottom, timing each cell.

    python benchmarks/run_lesson.py lessons/09_sedd_text8.ipynb [--figures DIR]

For machines without Jupyter (the lent GPU machine has torch and matplotlib but no network to
install nbconvert): the cells run in one namespace, in order, with matplotlib's Agg backend, so
that a lesson's GPU branch ("full" scale) can be checked there. Figures go to ``--figures`` (a
temporary folder by default, so the committed CPU figures are left alone). IPython magics and shell
lines are skipped. A failing cell stops the run with its traceback and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebook")
    p.add_argument("--figures", default=None, help="where save_figure writes (default: a temp dir)")
    a = p.parse_args(argv)
    nb = Path(a.notebook).resolve()
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["DDLAB_FIGURES"] = a.figures or tempfile.mkdtemp(prefix="ddlab-figures-")
    sys.path.insert(0, str(ROOT))
    from ddlab.course import notebook_cells, without_magics
    os.chdir(nb.parent)                     # lessons write runs/ beside themselves
    namespace: dict = {"__name__": "__main__"}
    start = time.perf_counter()
    for k, code in enumerate((without_magics(c) for c in notebook_cells(nb, "code")), 1):
        t0 = time.perf_counter()
        print(f"----- cell {k}", flush=True)
        try:
            exec(compile(code, f"{nb.name}[cell {k}]", "exec"), namespace)
        except Exception:
            traceback.print_exc()
            print(f"FAILED in cell {k} after {time.perf_counter() - start:.1f} s", flush=True)
            return 1
        print(f"----- cell {k}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{nb.name}: all cells ran in {time.perf_counter() - start:.1f} s; figures in "
          f"{os.environ['DDLAB_FIGURES']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
