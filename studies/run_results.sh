#!/usr/bin/env bash
# The measurements of docs/results.md, Part 2 (dLLM v1; Part 1 is run_results_v2.sh): 32 prompts x 3 seeds x 4 methods at K=4, T=32, L=32, M=3, eta=0.5,
# tau=0.7, top_p=0.95 on the embedded stack, and the eta sweep (8 prompts x 2 seeds, T=L=32, eta 0.1-2) with its
# plot. Runs as one-thread processes in two lanes (one per core); merging checks the settings match. About 2.5 hours
# on 2 cores. Usage: bash studies/run_results.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/results}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src
common=(--num-prompts 32 -K 4 -T 32 -L 32 -M 3 --eta 0.5 --tau 0.7 --top-p 0.95 --dllm v1 --threads 1)
sweep=(--num-prompts 8 --seeds 0 1 -T 32 -L 32 --dllm v1 --threads 1)
bench() { python -m entrgi_pipelines.bench "$@" > "${@: -1}.log" 2>&1; }
eta_sweep() { python studies/eta_sweep.py "$@" > "${@: -1}.log" 2>&1; }
(
  bench --methods none entrgi --seeds 0 1 2 "${common[@]}" --output "$out/none_entrgi.json"
  bench --methods expectation --seeds 2 "${common[@]}" --output "$out/expectation_2.json"
  eta_sweep --methods expectation "${sweep[@]}" --output "$out/sweep_exp.json"
  eta_sweep --methods aps --etas 0.1 0.5 "${sweep[@]}" --output "$out/sweep_aps_lo.json"
) &
(
  bench --methods aps --seeds 0 1 2 "${common[@]}" --output "$out/aps.json"
  bench --methods expectation --seeds 0 1 "${common[@]}" --output "$out/expectation_01.json"
  eta_sweep --methods none aps --etas 1.0 2.0 "${sweep[@]}" --output "$out/sweep_aps_hi.json"
  eta_sweep --methods entrgi "${sweep[@]}" --output "$out/sweep_entrgi.json"
) &
wait
python studies/merge_bench.py "$out/none_entrgi.json" "$out/aps.json" "$out/expectation_01.json" \
    "$out/expectation_2.json" --output "$out/results.json" --markdown "$out/results_table.md"
python studies/eta_sweep.py --merge "$out"/sweep_{aps_hi,exp,aps_lo,entrgi}.json --output "$out/eta_sweep.json" \
    --plot "$out/eta_sweep.png"
python studies/write_results.py "$out/results.json" --sweep "$out/eta_sweep.json" > "$out/results_measured.md"
