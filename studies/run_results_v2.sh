#!/usr/bin/env bash
# The measurements of docs/results.md on dLLM v2 (issue 8): both guidance rewards x four methods on the same
# 24 prompts x seeds 0, 1, 2 at K=4, T=L=16, M=3, eta=0.5, tau=0.7, top_p=0.95, in batches of 4 prompts:
#   - lm-judge: SmolLM2-135M-Instruct's log-probability of the target description after the response
#   - similarity: MiniLM cosine similarity of target and response
#   - the lm-judge eta sweep: the first 4 prompts x seeds 0, 1 at eta 0.1, 1 and 2 (eta 0.5: the main runs' first
#     batch, the same records)
#   - the soft-input gap (studies/soft_hard_gap.py) of each guided method under each reward
# Two one-thread lanes (one per core), every part resumable (--resume; a killed part restarts where it stopped).
# About 3 h on 2 cores. Then merges the parts and renders the tables of docs/results.md (OUT_DIR/*.md).
# Usage: bash studies/run_results_v2.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/results_v2}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src
common=(-K 4 -T 16 -L 16 -M 3 --tau 0.7 --top-p 0.95 --dllm v2 --batch-size 4 --threads 1)
main=(--num-prompts 24 --seeds 0 1 2 --eta 0.5 "${common[@]}")
sweep=(--reward lm-judge --num-prompts 4 --seeds 0 1 --methods expectation aps entrgi "${common[@]}")
bench() { python -m entrgi_pipelines.bench --resume "$@" > "${@: -1}.log" 2>&1; }
gap() { python studies/soft_hard_gap.py --threads 1 "$@" > "${@: -1}.log" 2>&1; }
(
  bench --reward lm-judge "${main[@]}" --methods none entrgi --output "$out/lm_none_entrgi.json"
  bench --reward lm-judge "${main[@]}" --methods expectation --output "$out/lm_expectation.json"
  bench "${sweep[@]}" --eta 0.1 --output "$out/lm_sweep_eta0.1.json"
  gap --reward similarity --num-prompts 8 --seeds 0 1 --output "$out/gap_similarity.json"
) &
(
  bench --reward lm-judge "${main[@]}" --methods aps --output "$out/lm_aps.json"
  bench --reward similarity "${main[@]}" --methods none expectation aps entrgi --output "$out/sim_all.json"
  bench "${sweep[@]}" --eta 1.0 --output "$out/lm_sweep_eta1.json"
  bench "${sweep[@]}" --eta 2.0 --output "$out/lm_sweep_eta2.json"
  gap --reward lm-judge --num-prompts 4 --seeds 0 1 --output "$out/gap_lm.json"
) &
wait
python studies/merge_bench.py "$out"/lm_{none_entrgi,expectation,aps}.json --output "$out/lm_judge.json"
python studies/merge_bench.py "$out/sim_all.json" --output "$out/similarity.json"
python studies/eta_sweep.py --bench "$out"/lm_{none_entrgi,expectation,aps,sweep_eta0.1,sweep_eta1,sweep_eta2}.json \
    --output "$out/lm_eta_sweep.json" --plot "$out/lm_eta_sweep.png" --fluency smollm
python studies/write_results.py --shared "$out/lm_judge.json" "$out/similarity.json" > "$out/shared.md"
python studies/write_results.py "$out/lm_judge.json" --sweep "$out/lm_eta_sweep.json" --level 4 > "$out/lm_judge.md"
python studies/write_results.py "$out/similarity.json" --level 4 > "$out/similarity.md"
python studies/soft_hard_gap.py --render "$out/gap_similarity.json" "$out/gap_lm.json" > "$out/gap.md"
