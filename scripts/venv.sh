# Sourced by start.sh and test.sh: a virtual environment in $VENV (default .venv) with a
# requirements file installed, reinstalled only when that file (or what it includes) changes.
VENV="${LIVESCRIBE_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  local requirements="$1"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed-$(basename "$requirements")"
  local digest
  digest="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    echo "Installing $requirements into $VENV (first run: a few minutes, ~600 MB with the models)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$requirements"
    echo "$digest" > "$stamp"
  fi
}
