#!/usr/bin/env bash
# The decoding study of docs/decoding.md (issue 14): EntRGi on dLLM v2 with block-wise and threshold decoding.
#   - blocks: one block of L=32 against blocks of 8 and 16 at the same T=16, each with guidance seeing the response
#     up to the current block (--guidance-scope block) or every masked position (--guidance-scope response)
#   - threshold decoding (blocks of 8) at thresholds 0.9, 0.7 (0.5 listed, not run) against the same blocks at fixed
#     steps, with the default entropy confidence at T=16, and with maskgit_plus (the token's probability, as
#     Fast-dLLM) at T=32, where a block's budget (8 steps) leaves room to end early
# K=4, M=3, eta=0.5, tau=0.7, top-p 0.95, batches of 4 prompts, seed 0. Similarity reward: the first 8 bundled v2
# prompts (the one-block run covers 12; comparisons pair the shared 8); lm-judge reward: the first 4 prompts (one
# block, blocks of 8 in both scopes, threshold 0.7). Sized to a shared 2-core machine; every part resumable
# (--resume: rerunning the script continues where it stopped). Two one-thread lanes, then
# studies/decoding_results.py renders the tables (docs/decoding_results.json).
# Usage: bash studies/run_decoding.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/decoding}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src
common=(-K 4 -T 16 -L 32 -M 3 --eta 0.5 --tau 0.7 --top-p 0.95 --dllm v2 --batch-size 4 --threads 1 --methods entrgi)
bench() { python -m entrgi_pipelines.bench --resume "$@" > "${@: -1}.log" 2>&1; }
sim=(--reward similarity --seeds 0 "${common[@]}")
lm=(--reward lm-judge --num-prompts 4 --seeds 0 "${common[@]}")
(
  bench --num-prompts 12 "${sim[@]}" --output "$out/sim_one_block.json"
  bench --num-prompts 8 "${sim[@]}" --block-length 8 --guidance-scope block --output "$out/sim_b8_block.json"
  bench --num-prompts 8 "${sim[@]}" --block-length 8 --guidance-scope response --output "$out/sim_b8_response.json"
  bench --num-prompts 8 "${sim[@]}" --block-length 8 --threshold 0.9 --output "$out/sim_b8_t0.9.json"
  bench --num-prompts 8 "${sim[@]}" --block-length 8 --threshold 0.7 --output "$out/sim_b8_t0.7.json"
  bench --num-prompts 8 "${sim[@]}" --block-length 16 --guidance-scope block --output "$out/sim_b16_block.json"
  bench --num-prompts 8 "${sim[@]}" --block-length 16 --guidance-scope response --output "$out/sim_b16_response.json"
  bench --num-prompts 8 "${sim[@]}" --block-length 8 --threshold 0.5 --output "$out/sim_b8_t0.5.json"
) &
(
  t32=(--num-prompts 8 "${sim[@]}" -T 32 --block-length 8 --confidence maskgit_plus)
  bench "${t32[@]}" --threshold 0.9 --output "$out/sim_t32_mgp_t0.9.json"
  bench "${t32[@]}" --output "$out/sim_t32_mgp_fixed.json"
  bench "${t32[@]}" --threshold 0.7 --output "$out/sim_t32_mgp_t0.7.json"
) &
(
  bench "${lm[@]}" --output "$out/lm_one_block.json"
  bench "${lm[@]}" --block-length 8 --guidance-scope block --output "$out/lm_b8_block.json"
  bench "${lm[@]}" --block-length 8 --guidance-scope response --output "$out/lm_b8_response.json"
  bench "${lm[@]}" --block-length 8 --threshold 0.7 --output "$out/lm_b8_t0.7.json"
) &
wait
python studies/decoding_results.py "$out" --output docs/decoding_results.json > "$out/decoding.md"
