"""The throwaway JupyterLab of the browser test: private, and gone afterwards even on failure."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab_server import running_lab


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_lab_is_private_and_stops_when_the_test_fails(tmp_path):
    (tmp_path / "note.txt").write_text("hello")
    with pytest.raises(RuntimeError, match="a failing test"):
        with running_lab(tmp_path) as lab:
            port = int(lab.base.rsplit(":", 1)[1])
            assert lab.base.startswith("http://127.0.0.1:") and _port_open(port)
            assert len(lab.token) == 48
            # Only the token opens it.
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(f"{lab.base}/api/contents/note.txt", timeout=10)
            assert denied.value.code == 403
            assert lab.api("GET", "contents/note.txt")["name"] == "note.txt"
            # Its settings are the throwaway ones written for the test, not the user's.
            settings = json.loads(urllib.request.urlopen(urllib.request.Request(
                f"{lab.base}/lab/api/settings/@jupyterlab/notebook-extension:tracker",
                headers={"Authorization": f"token {lab.token}"}), timeout=10).read())
            assert settings["settings"]["windowingMode"] == "none"
            kernel = lab.api("POST", "kernels")
            assert [k["id"] for k in lab.api("GET", "kernels")] == [kernel["id"]]
            lab.shutdown_kernels()
            assert lab.api("GET", "kernels") == []
            left_running = lab.api("POST", "kernels")["id"]
            assert _processes_mentioning(left_running)
            raise RuntimeError("a failing test")
    assert not _port_open(port), "the server still listens after the with block"
    assert not _processes_mentioning(left_running), "a kernel outlived the server"


def _processes_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains text (a kernel's id is in its
    connection file's name)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids
