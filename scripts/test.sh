#!/usr/bin/env bash
# Set up a virtual environment from scratch (or reuse it) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch is pinned to the CPU build that lies on disk; an unpinned torch pulls a multi-GB CUDA build
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[dev,scale]" 2>&1 | grep -v "^WARNING: Location" || true
# the browser tests drive Debian's Chromium (never `playwright install`, which downloads its own)
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: the browser tests will be skipped (sudo apt-get install -y chromium)" >&2
  fi
fi
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
