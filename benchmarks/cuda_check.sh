#!/usr/bin/env bash
# One prepared device check (< 5 minutes on one H100 or H200): install if needed, run the CUDA-marked tests, time a
# guided call against its floor at the 7B / 1.7B shapes (benchmarks/bench_guidance.py; random weights from the
# published configs, nothing downloaded: a Dream-7B-shaped dLLM and a Qwen3-1.7B-shaped reward model in bf16, one
# 100-token prompt, K=4, L=128, T=32, M=3), run docs/reproduce.md's command (`entrgi-bench --paper`) offline on
# random-weight stand-ins of the real shapes in a local Hub cache (benchmarks/paper_check.py: Dream's vocabulary and
# widths with 4 of its layers, Qwen3-1.7B- and 0.6B-shaped rewards; one prompt per benchmark, T=8, the 0.6B as
# held-out scorer), then time the guided call with the inner guidance step compiled (T=16).
# Usage on the GPU machine, from the repository root:  bash benchmarks/cuda_check.sh [OUT_DIR]
# Every step has its own time limit, cut to what is left of 295 s, so that the whole stays under 5 minutes even when
# a step hangs; the exit status is non-zero when any step failed or did not run. Results: OUT_DIR/*.json, *.txt, *.md.
set -uo pipefail
out=${1:-${OUT:-.}}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=src TOKENIZERS_PARALLELISM=false
deadline=$((SECONDS + 295))
# The limit of the next step: its own, or what is left of the whole (at least 1 s: `timeout 0` would mean none).
limit() { local left=$((deadline - SECONDS)); ((left < $1)) && echo $((left > 1 ? left : 1)) || echo "$1"; }
python3 -c "import torch, diffusers, transformers, accelerate, datasets" 2>/dev/null || pip install -q -e ".[test]"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
status=0
timeout "$(limit 90)" python3 -m pytest -q -m cuda tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.txt" || status=1
# The last stdout line of bench_guidance.py is its JSON result (also written to --output); the report goes to stderr.
timeout "$(limit 100)" python3 benchmarks/bench_guidance.py --device cuda --output "$out/bench_7b.json" \
    2> "$out/bench_7b.txt" || status=1
tail -n 30 "$out/bench_7b.txt"
# The paper's command on stand-ins: the Hub cache goes to a scratch folder (GBs of weights), not to OUT_DIR.
home=$(mktemp -d)
if timeout "$(limit 100)" python3 benchmarks/paper_check.py --cache "$home" --shape paper --dllm-layers 4 \
    --device cuda --dtype bfloat16 > "$out/paper_check_build.txt" 2>&1; then
    HF_HOME="$home" HF_HUB_CACHE="$home/hub" timeout "$(limit 120)" \
        python3 -m entrgi_pipelines.bench --paper --num-prompts 1 -T 8 --eval-reward-model \
        Skywork/Skywork-Reward-V2-Qwen3-0.6B --output "$out/paper_check.json" \
        --markdown "$out/paper_check.md" > "$out/paper_check_stdout.txt" 2> "$out/paper_check.txt" || status=1
    tail -n 20 "$out/paper_check_stdout.txt"
else
    status=1
    tail -n 20 "$out/paper_check_build.txt"
fi
rm -rf "$home"
timeout "$(limit 90)" python3 benchmarks/bench_guidance.py --device cuda -T 16 --compile \
    --output "$out/bench_7b_compile.json" 2> "$out/bench_7b_compile.txt" || status=1
tail -n 30 "$out/bench_7b_compile.txt"
exit $status
