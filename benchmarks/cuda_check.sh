#!/usr/bin/env bash
# One prepared device check (< 5 minutes on one H200): install, run the CUDA-marked tests, time guided steps.
# Usage on the GPU machine, from the repository root:  bash benchmarks/cuda_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-${OUT:-.}}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers, transformers" 2>/dev/null || pip install -q -e ".[test]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
PYTHONPATH=src python3 -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.txt"
PYTHONPATH=src python3 benchmarks/cuda_timing.py 2>&1 | tee "$out/cuda_timing.txt"
