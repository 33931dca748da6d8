#!/usr/bin/env bash
# The JupyterHub round-trip test target: installs jupyterhub + configurable-http-proxy
# (tests/hub/setup.sh), then runs tests/hub with GRADING_HUB=1. About 2-4 minutes.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
bash "$HERE/setup.sh"
cd "$ROOT"
GRADING_HUB=1 "$PY" -m pytest -q -s tests/hub "$@"
