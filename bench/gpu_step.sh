#!/usr/bin/env bash
# Every GPU check of issue 13 in one go, for one lent H200 (about 6-8 minutes):
#   the update phase of real-size Qwen2.5-VL-3B and 7B (random weights, bf16), packed and right-padded,
#   forward / backward / optimizer time, tokens/s, MFU (989 and 790 TFLOP/s), peak memory (bench/gpu_step.py).
# Run from the repository root:   bash bench/gpu_step.sh        (results under $OUT, default bench/results)
# The device has torch and transformers but no network: the imports the framework needs are checked first.
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PY=${PY:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
$PY -c "import pydantic, PIL, yaml, safetensors" 2>&1 | tee -a "$OUT/gpu.txt" || true
# 3B: language model not checkpointed (the MFU goal's setting), vision tower checkpointed; 7B: both checkpointed.
# 16 trajectories of 1-4 tool turns, micro-batches of 16k tokens.
timeout 540 $PY bench/gpu_step.py --sizes 3b,7b --lm-ckpt 7b --vision-ckpt 3b,7b --modes padded,packed,packed-flex --steps 2 --warmup 1 \
  --json "$OUT/gpu_step.json" 2>&1 | tee "$OUT/gpu_step.txt"
