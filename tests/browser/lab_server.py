"""A throwaway JupyterLab server for the browser test (tests/browser/test_lessons_in_browser.py).

``running_lab(root)`` starts ``jupyter lab`` on a free loopback port with a random token, and with
its own settings, workspace, runtime and config directories in a temporary folder, so the test
neither reads nor writes the reader's own Jupyter state. The server serves ``root`` (a scratch copy
of the lessons, so nothing the browser does can rewrite the repository's notebooks), and it is shut
down, with its kernels, when the ``with`` block exits, whether the test passed or failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# User settings that make the page behave the same on every run:
# - windowingMode "none": JupyterLab 4 otherwise renders only the cells in view, so sliders
#   further down would not be in the page at all;
# - autosave off: the browser must never write back to the notebooks it runs;
# - no news or update toasts over the page (they need the network anyway).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}


@dataclass
class Lab:
    """A running server: ``url(path)`` opens ``path`` (relative to the served root) in Lab."""
    base: str
    token: str
    root: Path
    log: Path

    def url(self, path: str = "") -> str:
        return f"{self.base}/doc/tree/{path}?token={self.token}&reset"

    def api(self, method: str, path: str):
        """Call the server's REST API; returns the decoded JSON answer (None when empty)."""
        req = urllib.request.Request(f"{self.base}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel, so that one lesson's kernel does not compete with the next's."""
        for k in self.api("GET", "kernels"):
            with contextlib.suppress(urllib.error.URLError):
                self.api("DELETE", f"kernels/{k['id']}")

    def log_tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(base: str, token: str, proc: subprocess.Popen, log: Path, timeout: float):
    """Poll the REST API until the server answers (or fail with the end of its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}:\n"
                               + log.read_text(errors="replace")[-3000:])
        try:
            req = urllib.request.Request(f"{base}/api/status",
                                         headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s:\n"
                       + log.read_text(errors="replace")[-3000:])


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT twice is Jupyter's clean shutdown (it also stops its kernels); then escalate to
    SIGTERM and finally SIGKILL of the server's process group (kernels have groups of their own:
    running_lab stops them through the API first)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 0.3), (signal.SIGINT, 8), (signal.SIGTERM, 5)):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_lab(root: Path, *, env: dict | None = None, timeout: float = 90.0):
    """Start JupyterLab serving ``root``; yield a :class:`Lab`; always shut it down."""
    jupyter_lab = Path(sys.executable).with_name("jupyter-lab")
    if not jupyter_lab.exists():
        raise RuntimeError(f"{jupyter_lab} not found: install the course extra (pip install -e '.[course]')")
    with tempfile.TemporaryDirectory(prefix="ddlab-lab-") as tmp:
        tmp = Path(tmp)
        settings = tmp / "settings"
        for name, value in LAB_SETTINGS.items():
            f = settings / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(value))
        for d in ("workspaces", "runtime", "config", "data"):
            (tmp / d).mkdir()
        port, token = free_port(), secrets.token_hex(24)
        full_env = {k: v for k, v in os.environ.items()
                    # A non-interactive backend here would make plt.show() draw nothing in the page.
                    if k not in ("MPLBACKEND", "JUPYTER_TOKEN")}
        full_env.update({
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),
            # User data dir too (notebook-signing key, user kernelspecs); the kernel and the
            # widget front end come from the environment's own share/jupyter, still searched.
            "JUPYTER_DATA_DIR": str(tmp / "data"),
            "PYTHONUNBUFFERED": "1",
        })
        # The lessons run in their quick setting (as under `make test-lessons`): lesson 9 trains for
        # minutes in its real CPU setting, longer than the browser waits.
        full_env.setdefault("DDLAB_SCALE", "quick")
        full_env.update(env or {})
        log = tmp / "lab.log"
        cmd = [str(jupyter_lab), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
               "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI and containers run as root
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        lab = None
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_up(base, token, proc, log, timeout)
            lab = Lab(base=base, token=token, root=root, log=log)
            yield lab
        finally:
            if lab is not None:
                with contextlib.suppress(Exception):  # best effort: _stop is the guarantee
                    lab.shutdown_kernels()
            _stop(proc)
