#!/usr/bin/env bash
# Start the transcription server: create .venv if missing, install requirements.txt when it
# changed, then run `python -m server` with every argument passed through.
#   ./start.sh                       # http://127.0.0.1:8000, Whisper tiny.en, offline
#   ./start.sh --host 0.0.0.0 --model base
#   LIVESCRIBE_PORT=9000 ./start.sh  # every flag also has an environment variable
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv requirements.txt
exec "$VENV/bin/python" -m server "$@"
