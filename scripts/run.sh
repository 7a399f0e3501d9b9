#!/usr/bin/env bash
# Install the runtime dependencies and start blossom-dash on http://127.0.0.1:8501.
# Extra arguments go to `streamlit run` (e.g. --server.port 8600). Without sign-in
# ([auth] in .streamlit/secrets.toml) or kiosk mode, the launcher refuses any address
# but loopback before the server listens (README, Sign-in).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec "$PYTHON" -m blossom_dash.ui.launch "$@"
