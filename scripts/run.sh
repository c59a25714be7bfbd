#!/usr/bin/env bash
# Set up a virtual environment from scratch (or reuse it) and start the app on the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" -e . 2>&1 | grep -v "^WARNING: Location" || true
exec .venv/bin/engram app "$@"
