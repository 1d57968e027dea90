#!/usr/bin/env bash
# One prepared device check (< 5 minutes on one H200): install if needed, run the CUDA-marked tests, then time a guided
# call against its floor at the 7B / 1.7B shapes (benchmarks/bench_guidance.py; random weights from the published
# configs, nothing downloaded): a Dream-7B-shaped dLLM and a Qwen3-1.7B-shaped reward model in bf16, one 100-token
# prompt, K=4, L=128, T=32, M=3; then the same with the inner guidance step compiled (T=16).
# Usage on the GPU machine, from the repository root:  bash benchmarks/cuda_check.sh [OUT_DIR]
# Every step has its own time limit (90 + 100 + 90 s, about 1 minute each expected), so that the whole stays under 5
# minutes even when a step hangs; the exit status is non-zero when any step failed. Results: OUT_DIR/*.json, *.txt.
set -uo pipefail
out=${1:-${OUT:-.}}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=src TOKENIZERS_PARALLELISM=false
python3 -c "import torch, diffusers, transformers, accelerate" 2>/dev/null || pip install -q -e ".[test]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
status=0
timeout 90 python3 -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.txt" || status=1
# The last stdout line of bench_guidance.py is its JSON result (also written to --output); the report goes to stderr.
timeout 100 python3 benchmarks/bench_guidance.py --device cuda --output "$out/bench_7b.json" \
    2> "$out/bench_7b.txt" || status=1
tail -n 30 "$out/bench_7b.txt"
timeout 90 python3 benchmarks/bench_guidance.py --device cuda -T 16 --compile --output "$out/bench_7b_compile.json" \
    2> "$out/bench_7b_compile.txt" || status=1
tail -n 30 "$out/bench_7b_compile.txt"
exit $status
