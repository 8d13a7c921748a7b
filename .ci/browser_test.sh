#!/usr/bin/env bash
# Lessons in a real browser (`make test-browser`, also run by .ci/run).
#
# Installs what the browser test needs when it is missing, and only then: Debian's chromium (apt)
# and Playwright's Python package (pip, from PyPI). It never downloads a browser build of its own
# (no `playwright install`): the test drives /usr/bin/chromium. When Chromium cannot be installed
# (not root, no apt-get, no network) the test skips and says so; anything else failing fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PLAYWRIGHT_SPEC=${PLAYWRIGHT_SPEC:-playwright>=1.40}   # keep equal to the `browser` extra

have_chromium() { [ -x /usr/bin/chromium ] || [ -n "${DDLAB_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; }

if ! have_chromium; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "browser test: installing Debian's chromium (apt-get)"
        # Recommends stay on: they bring the fonts (fonts-liberation) the page is drawn with.
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            echo "browser test: apt-get could not install chromium; the test will skip" >&2
        fi
    else
        echo "browser test: chromium is missing and this user cannot apt-get install it; the test will skip" >&2
    fi
fi

if ! "$PY" -c 'import playwright.sync_api' 2>/dev/null; then
    echo "browser test: installing $PLAYWRIGHT_SPEC (pip; no browser download)"
    "$PY" -m pip install -q "$PLAYWRIGHT_SPEC"
fi

exec "$PY" -m pytest tests/browser -v -s -rs "$@"
