#!/usr/bin/env bash
# The measurements of dLLM v3 (issue 23) in docs/results.md and docs/stack.md, on the settings of Part 1 (v2):
# K=4, T=L=16 (blocks of 4, one token per step), M=3, eta=0.5, tau=0.7, top_p=0.95, batches of 4 prompts, the bundled
# prompts:
#   - the four methods under the lm-judge reward (SmolLM2, v3's own tokenizer: no vocabulary bridge), SEEDS seeds
#   - unguided against EntRGi under the similarity reward (MiniLM, through the vocabulary bridge)
#   - studies/v3_vs_v2.py: threshold decoding's calls, seconds per answer and fluency, v3 against v2, unguided
#   - benchmarks/bench_block_diffusion.py --embedded v3: cache off / on timing and threshold savings per batch size
#   - studies/v3_check.py: the shipped adapter's export check, greedy answers, and its held-out masked-token accuracy
#     per block slot read at blocks of 2, 4 and 8
# Two one-thread lanes (one per core), every part resumable. Usage: bash studies/run_results_v3.sh [OUT_DIR] [SEEDS...]
set -euo pipefail
out=${1:-runs/results_v3}
shift || true
seeds=("${@:-0 1}")
# shellcheck disable=SC2206
seeds=(${seeds[@]})
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src OMP_NUM_THREADS=1
common=(-K 4 -T 16 -L 16 -M 3 --tau 0.7 --top-p 0.95 --dllm v3 --batch-size 4 --threads 1)
main=(--num-prompts 24 --seeds "${seeds[@]}" --eta 0.5 "${common[@]}")
bench() { python -m entrgi_pipelines.bench --resume "$@" > "${@: -1}.log" 2>&1; }
(
  bench --reward lm-judge "${main[@]}" --methods none entrgi --output "$out/lm_none_entrgi.json"
  bench --reward similarity --num-prompts 24 --seeds 0 --eta 0.5 "${common[@]}" --methods none entrgi \
      --output "$out/sim_none_entrgi.json"
  (cd benchmarks && PYTHONPATH=../src:. python bench_block_diffusion.py --embedded v3 --lengths 128 256 \
      --threshold-length 64 --output "../$out/block_v3.json" > "../$out/block_v3.log" 2>&1)
) &
(
  bench --reward lm-judge "${main[@]}" --methods expectation aps --output "$out/lm_expectation_aps.json"
  python studies/v3_vs_v2.py --dllm v3 v2 --num-prompts 8 -K 2 -L 32 --output "$out/v3_vs_v2.json" \
      > "$out/v3_vs_v2.log" 2>&1
  python studies/v3_vs_v2.py --dllm v3 v2 --prompts held-out --num-prompts 8 -K 2 -L 32 \
      --output "$out/v3_vs_v2_heldout.json" > "$out/v3_vs_v2_heldout.log" 2>&1
  python studies/v3_check.py --adapter src/entrgi_pipelines/stack/weights/dllm-v3 --distill corpus/distill.jsonl \
      --eval-answers "${EVAL_ANSWERS:-40}" --block-sizes 2 4 8 --output "$out/v3_check.json" > "$out/v3_check.log" 2>&1
) &
wait
python studies/merge_bench.py "$out"/lm_{none_entrgi,expectation_aps}.json --output "$out/lm_judge.json"
python studies/write_results.py "$out/lm_judge.json" --level 4 > "$out/lm_judge.md"
python studies/write_results.py "$out/sim_none_entrgi.json" --level 4 > "$out/similarity.md"
