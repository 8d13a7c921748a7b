"""The work tree after a test session is the work tree before it (tests and lessons alike).

``make test`` runs the unit tests and then every lesson under nbval; both must leave
``git status`` exactly as they found it. At the start of a session this records every tracked
file that differs from HEAD, and every untracked file that git does not ignore, with a hash of
its bytes; at the end it records them again. Any difference (a lesson that rewrote a figure with
other bytes, a test that left a file behind) fails the session and names the files. Lessons keep
the tree clean by writing their figures to ``$DDLAB_FIGURES`` (the Makefile points it at a
temporary folder). Outside a git checkout, or without git, the check is skipped.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def tree_state(root: Path = ROOT) -> dict[str, str] | None:
    """{path: sha256 of its bytes} for the files git reports as changed or untracked."""
    try:
        out = subprocess.run(["git", "status", "--porcelain=v1", "-z", "-uall"], cwd=root,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    state = {}
    for entry in out.decode(errors="replace").split("\0"):
        if len(entry) < 4:
            continue
        path = entry[3:]
        f = root / path
        state[path] = (entry[:2] + " " + hashlib.sha256(f.read_bytes()).hexdigest()
                       if f.is_file() else entry[:2])
    return state


def changed_paths(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):          # the xdist controller, or no xdist
        session.config._ddlab_tree = tree_state()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_ddlab_tree", None)
    if before is None:
        return
    after = tree_state()
    if after is None:
        return
    changed = changed_paths(before, after)
    if changed:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = ("the test session changed the work tree (make test must leave it as it found "
               "it): " + ", ".join(changed[:20]) + (" ..." if len(changed) > 20 else ""))
        if tr is not None:
            tr.write_line("ERROR: " + msg, red=True)
        session.exitstatus = 1
