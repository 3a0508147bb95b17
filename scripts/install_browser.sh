#!/usr/bin/env bash
# Install what the real-browser tests need: Debian's Chromium (tests/test_browser.py) and
# firefox-esr (tests/test_firefox.py). Idempotent: installs only what is missing. The
# Playwright Python package comes from requirements-dev.txt; never run `playwright install`
# (the tests drive Debian's chromium through executable_path; Firefox runs without a driver).
#
# Usage: scripts/install_browser.sh        (as root, or with sudo available)
set -euo pipefail

CHROMIUM=/usr/bin/chromium
FIREFOX=/usr/bin/firefox-esr  # Debian's ESR, run headless without a driver by tests/test_firefox.py

# Install the given Debian packages in one apt run, as root or through sudo.
apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "install_browser: not root and no sudo: cannot install $*" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "$@"
}

missing=()
[ -x "$CHROMIUM" ] || missing+=(chromium chromium-driver fonts-liberation fonts-dejavu-core)
[ -x "$FIREFOX" ] || missing+=(firefox-esr)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
for browser in "$CHROMIUM" "$FIREFOX"; do
  echo "install_browser: $("$browser" --version 2>/dev/null || echo "$browser") installed"
done

# A headless start proves the binary runs here (missing libraries show up now, not mid-test).
if ! timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
     --disable-background-networking --dump-dom about:blank >/dev/null 2>&1; then
  echo "install_browser: $CHROMIUM is installed but does not start headless" >&2
  exit 1
fi

PY="${PYTHON:-python}"
if ! "$PY" -c "import playwright" >/dev/null 2>&1; then
  echo "install_browser: note: the 'playwright' package is missing from $PY; pip install -r requirements-dev.txt" >&2
fi
