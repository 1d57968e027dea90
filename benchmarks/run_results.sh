#!/usr/bin/env bash
# The measurements of docs/results.md: 32 prompts x 3 seeds x 4 methods at K=4, T=32, L=32, M=3, eta=0.5,
# tau=0.7, top_p=0.95 on the embedded stack, and the eta sweep plot (4 prompts, 1 seed). The methods run as parallel one-thread
# processes (same prompts, same seeds; merging checks the settings match). About an hour on 2 cores.
set -euo pipefail
out=${1:-runs/results}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src
common=(--num-prompts 32 --seeds 0 1 2 -K 4 -T 32 -L 32 -M 3 --eta 0.5 --tau 0.7 --top-p 0.95 --threads 1)
python -m entrgi_pipelines.bench --methods none entrgi "${common[@]}" --output "$out/none_entrgi.json" > "$out/none_entrgi.log" 2>&1 &
python -m entrgi_pipelines.bench --methods aps "${common[@]}" --output "$out/aps.json" > "$out/aps.log" 2>&1 &
python -m entrgi_pipelines.bench --methods expectation "${common[@]}" --output "$out/expectation.json" > "$out/expectation.log" 2>&1 &
python benchmarks/eta_sweep.py --num-prompts 4 --seeds 0 -T 32 -L 32 --threads 1 --etas 0.1 0.5 1.0 2.0 \
    --output "$out/eta_sweep.json" --plot "$out/eta_sweep.png" > "$out/eta_sweep.log" 2>&1 &
wait
python benchmarks/merge_bench.py "$out/none_entrgi.json" "$out/expectation.json" "$out/aps.json" \
    --output "$out/results.json" --markdown "$out/results_table.md"
