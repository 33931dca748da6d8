#!/usr/bin/env bash
# Install what the JupyterHub round-trip test needs, from the project's own files:
#   - jupyterhub (requirements-hub.txt) into the course venv,
#   - configurable-http-proxy from npm into tests/hub/node_modules (no global install).
# Idempotent: does nothing that is already done.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CHP_VERSION="5.3.0"

if ! "$PY" -c "import jupyterhub, psycopg2" 2>/dev/null; then
  "$PY" -m pip install -q -r "$ROOT/requirements-hub.txt"
fi
if [ ! -x "$HERE/node_modules/.bin/configurable-http-proxy" ]; then
  command -v npm >/dev/null || { echo "npm is missing: apt-get install -y nodejs npm" >&2; exit 1; }
  (cd "$HERE" && npm install --no-audit --no-fund --silent --prefix "$HERE" "configurable-http-proxy@$CHP_VERSION" >/dev/null)
fi
"$PY" -c "import jupyterhub; print('jupyterhub', jupyterhub.__version__)"
"$HERE/node_modules/.bin/configurable-http-proxy" --version | sed 's/^/configurable-http-proxy /'
