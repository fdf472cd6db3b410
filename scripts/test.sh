#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need, then runs the whole suite.
#  - Debian's `chromium` for the web UI's browser tests: installed with apt-get when missing and this runs as
#    root; otherwise the reason is printed here, and pytest lists those tests as skipped with it (-ra).
#  - .venv with the package and its dev extra (pytest, httpx, Playwright for Python, which drives that
#    chromium through executable_path: never `playwright install`, nothing downloads a browser).
# Arguments go to pytest (e.g. scripts/test.sh tests/web).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${CTDL_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing Debian's chromium for the browser tests (apt-get)"
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); then
    echo "test.sh: apt-get could not install chromium: the browser tests will be skipped"
  fi
else
  echo "test.sh: no chromium, and it cannot be installed here (needs root and apt-get): the browser tests will be" \
       "skipped (install it with 'sudo apt-get install -y chromium', or set CTDL_CHROMIUM)"
fi
python3 -m venv .venv
.venv/bin/pip install -e ".[dev]"
exec .venv/bin/python -m pytest -q "$@"
