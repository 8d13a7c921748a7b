"""The browser test runs only when asked for by path (``make test-browser``, ``pytest tests/browser``).

It needs Chromium and JupyterLab and takes a few minutes, so a plain ``pytest tests`` (``make
test-unit``) leaves this folder out of collection instead of reporting it as skipped.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def _asked_for(config) -> bool:
    """True when a command-line argument names this folder or something inside it."""
    cwd = Path(config.invocation_params.dir)
    for arg in config.args:
        target = (cwd / arg.split("::")[0]).resolve()
        if target == HERE or HERE in target.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".py" and not _asked_for(config):
        return True
    return None
