#!/usr/bin/env bash
# The measurements of docs/results.md on dLLM v2 (issue 8): both guidance rewards x four methods on the same
# prompts and seeds at K=4, T=L=16, M=3, eta=0.5, tau=0.7, top_p=0.95, batches of 4 prompts:
#   - lm-judge (SmolLM2-135M-Instruct likelihood reward): the first 16 prompts x seeds 0, 1
#   - similarity (MiniLM cosine): the first 24 prompts x seeds 0, 1, 2 (a superset of the lm-judge pairs)
#   - the lm-judge eta sweep: the first 4 prompts x seeds 0, 1 at eta 0.1 and 2 (eta 0.5: the main runs' first batch)
# Two one-thread lanes (one per core), every part resumable (--resume). About 2 h on 2 cores.
# Then merges the parts and renders the tables of docs/results.md (OUT_DIR/*.md).
# Usage: bash benchmarks/run_results_v2.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/results_v2}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src
common=(-K 4 -T 16 -L 16 -M 3 --tau 0.7 --top-p 0.95 --dllm v2 --batch-size 4 --threads 1)
lm=(--reward lm-judge --num-prompts 16 --eta 0.5 "${common[@]}")
bench() { python -m entrgi_pipelines.bench --resume "$@" > "${@: -1}.log" 2>&1; }
(
  bench "${lm[@]}" --methods none entrgi --seeds 0 1 --output "$out/lm_none_entrgi.json"
  bench "${lm[@]}" --methods expectation --seeds 0 1 --output "$out/lm_expectation.json"
  bench --reward lm-judge --num-prompts 4 --eta 0.1 "${common[@]}" --methods expectation aps entrgi --seeds 0 1 \
    --output "$out/lm_sweep_eta0.1.json"
) &
(
  bench "${lm[@]}" --methods aps --seeds 0 1 --output "$out/lm_aps.json"
  bench --reward similarity --num-prompts 24 --eta 0.5 "${common[@]}" --methods none expectation aps entrgi \
    --seeds 0 1 2 --output "$out/sim_all.json"
  bench --reward lm-judge --num-prompts 4 --eta 2.0 "${common[@]}" --methods expectation aps entrgi --seeds 0 1 \
    --output "$out/lm_sweep_eta2.json"
) &
wait
python benchmarks/merge_bench.py "$out"/lm_{none_entrgi,expectation,aps}.json --output "$out/lm_judge.json"
python benchmarks/merge_bench.py "$out/sim_all.json" --output "$out/similarity.json"
python benchmarks/eta_sweep.py --bench "$out"/lm_{none_entrgi,expectation,aps,sweep_eta0.1,sweep_eta2}.json \
    --output "$out/lm_eta_sweep.json" --plot "$out/lm_eta_sweep.png" --fluency smollm
python benchmarks/write_results.py --shared "$out/lm_judge.json" "$out/similarity.json" > "$out/shared.md"
python benchmarks/write_results.py "$out/lm_judge.json" --sweep "$out/lm_eta_sweep.json" --level 3 > "$out/lm_judge.md"
python benchmarks/write_results.py "$out/similarity.json" --level 3 > "$out/similarity.md"
