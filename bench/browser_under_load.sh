#!/usr/bin/env bash
# The browser tests, N runs in a row (default 20), with every core kept busy by another process.
# Stops at the first failing run. Usage: bash bench/browser_under_load.sh [N] [pytest args...]
# (default: every browser test: tests/test_browser_state.py tests/test_browser.py tests/test_browser_rows.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
n=${1:-20}
shift || true
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(tests/test_browser_state.py tests/test_browser.py tests/test_browser_rows.py)
busy=()
for _ in $(seq "$(nproc)"); do
  .venv/bin/python -c 'while True: pass' &
  busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
mkdir -p build
echo "$(nproc) busy processes; ${n} runs of ${tests[*]}"
for i in $(seq "$n"); do
  start=$(date +%s)
  if ! .venv/bin/python -m pytest -q -p no:cacheprovider "${tests[@]}" >"build/under-load-$i.log" 2>&1; then
    echo "run $i: FAILED (build/under-load-$i.log)"
    tail -5 "build/under-load-$i.log"
    exit 1
  fi
  echo "run $i: $(tail -1 "build/under-load-$i.log") ($(($(date +%s) - start)) s)"
done
echo "${n} of ${n} runs passed under load"
