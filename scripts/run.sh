#!/usr/bin/env bash
# Install the runtime dependencies and start blossom-dash on http://127.0.0.1:8501.
# Extra arguments go to `streamlit run` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec "$PYTHON" -m streamlit run app.py "$@"
