#!/usr/bin/env bash
# Creates .venv (if missing) and installs agent-grpo with its plugin packages.
# Usage: scripts/setup.sh [dev]   (dev adds pytest, hypothesis, ruff and Chromium for the browser tests)
# Prints one "[setup]" line per phase. When Chromium cannot be installed it says why, and writes the reason to
# $VENV/chromium-status.txt, which the browser tests give as their skip reason.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AGENT_GRPO_VENV:-.venv}
PY=${PYTHON:-python3}
SECONDS=0
say() { echo "[setup ${SECONDS}s] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV with $PY"
    "$PY" -m venv "$VENV"
else
    say "using the virtual environment $VENV"
fi
# --no-compile: pip byte-compiles on one core, half its time here; compileall does the same files on all cores below.
PIP="$VENV/bin/python -m pip install --no-compile"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first: on a CPU machine the pinned version resolves to the local CPU wheel, and with it installed
# no later requirement pulls the multi-GB CUDA build. Set TORCH_SPEC to choose another build.
say "installing ${TORCH_SPEC:-torch==2.13.0} (the longest step on a fresh machine)"
$PIP -q "${TORCH_SPEC:-torch==2.13.0}" 2> >(grep -v "is ignored" >&2)
EXTRA=""
if [ "${1:-}" = "dev" ]; then EXTRA="[dev]"; fi
say "installing agent-grpo$EXTRA and its tool and environment packages (editable)"
$PIP -q -e ".$EXTRA" -e ./tools -e ./envs 2> >(grep -v "is ignored" >&2)
say "compiling bytecode on all cores"
# rc 1 when a file does not compile: torch ships one written for Python >= 3.12 (pip skips it as well)
"$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" agent_grpo tools/agent_grpo_tools envs/agent_grpo_envs \
    >/dev/null || true

if [ "${1:-}" = "dev" ]; then
    # Debian's Chromium renders the replay report in tests/replay/test_html_browser.py.
    STATUS="$VENV/chromium-status.txt"
    LOG="$VENV/chromium-install.log"
    rm -f "$STATUS"
    problem=""
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        say "chromium found; the browser tests will run"
    elif ! command -v apt-get >/dev/null 2>&1; then
        problem="no apt-get on this machine to install it with; install Chromium and put it on PATH"
    elif [ "$(id -u)" != "0" ]; then
        problem="installing it needs root; run: sudo apt-get install chromium"
    else
        say "installing chromium with apt-get (log: $LOG)"
        if ! { apt-get update -qq && apt-get install -y -qq chromium; } >"$LOG" 2>&1; then
            problem="apt-get install chromium failed: $(tail -n 1 "$LOG") (full log: $LOG)"
        elif ! command -v chromium >/dev/null 2>&1; then
            problem="apt-get finished but no chromium is on PATH (log: $LOG)"
        else
            say "chromium installed; the browser tests will run"
        fi
    fi
    if [ -n "$problem" ]; then
        echo "[setup ${SECONDS}s] WARNING: chromium is not installed: $problem. The browser tests will be skipped." >&2
        echo "$problem" >"$STATUS"
    fi
fi
say "done"
