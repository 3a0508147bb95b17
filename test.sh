#!/usr/bin/env bash
# Run the test suite: create .venv if missing, install requirements-dev.txt when it changed,
# install Debian's Chromium for the browser tests (when root or sudo can), then pytest.
# Arguments go to pytest:   ./test.sh -k socket -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv requirements-dev.txt
if ! PYTHON="$VENV/bin/python" scripts/install_browser.sh; then
  echo "test.sh: WARNING: Chromium could not be installed; the real-browser tests will be SKIPPED" >&2
fi
exec "$VENV/bin/python" -m pytest "$@"
