#!/usr/bin/env bash
# The SMC resampling study of docs/results.md (issue 16), reduced to what one shared CPU core does in about an hour:
#   - calibration: CPU seconds per prompt of every setting on the first 4 prompts, and the Best-of-N K whose time
#     matches EntRGi + SMC (studies/smc_study.py calibrate)
#   - similarity reward, 16 prompts x seeds 0, 1: EntRGi; EntRGi + SMC (hard potential); SMC without guidance;
#     Best-of-N at K = 4 and at equal compute
#   - the sweep, similarity reward, 8 prompts x seed 0: the guidance potential; resample_temperature 0.03 / 0.1 / 0.3
#     and resample_every 2 / 4 / 8 (EntRGi + SMC, hard potential; 0.1 and 4 are the main runs' records)
#   - lm-judge reward, the first 4 prompts x seed 0: EntRGi, EntRGi + SMC, SMC without guidance, Best-of-N at K = 4
#     (a check of direction only; no equal-compute Best-of-N: its calibration is for the similarity reward)
# K=4, T=L=16, M=3, eta=0.5, tau=0.7, top-p 0.95, dLLM v2, batches of 4 prompts; SMC: every 4 steps, ESS threshold
# 0.5 K, temperature 0.1, unless the sweep says otherwise. One one-thread lane, every part resumable (--resume).
# Then studies/smc_study.py render writes the tables (OUT_DIR/smc.md) and docs/smc_results.json.
# Usage: nice -n 5 bash studies/run_smc.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/smc}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -f "$out/calibration.json" ] || python studies/smc_study.py calibrate --num-prompts 4 --output "$out/calibration.json"
bon_k=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['bon_samples'])" "$out/calibration.json")
common=(-T 16 -L 16 -M 3 --eta 0.5 --tau 0.7 --top-p 0.95 --dllm v2 --batch-size 4 --threads 1)
bench() { python -m entrgi_pipelines.bench --resume "$@" > "${@: -1}.log" 2>&1; }
smc=(--resample smc)
for reward in similarity lm-judge; do
  if [ "$reward" = similarity ]; then
    tag=sim; main=(--reward similarity --num-prompts 16 --seeds 0 1 "${common[@]}")
  else
    tag=lm; main=(--reward lm-judge --num-prompts 4 --seeds 0 "${common[@]}")
  fi
  bench "${main[@]}" -K 4 --methods entrgi --output "$out/${tag}_entrgi.json"
  bench "${main[@]}" -K 4 --methods entrgi "${smc[@]}" --output "$out/${tag}_entrgi_smc.json"
  bench "${main[@]}" -K 4 --methods none "${smc[@]}" --output "$out/${tag}_none_smc.json"
  bench "${main[@]}" -K 4 --methods none --output "$out/${tag}_bon.json"
  if [ "$reward" = similarity ]; then
    bench "${main[@]}" -K "$bon_k" --methods none --output "$out/sim_bon_equal.json"
    sweep=(--reward similarity --num-prompts 8 --seeds 0 -K 4 --methods entrgi "${common[@]}" "${smc[@]}")
    bench "${sweep[@]}" --potential guidance --output "$out/sim_entrgi_smc_guidance.json"
    bench "${sweep[@]}" --resample-temperature 0.03 --output "$out/sim_entrgi_smc_t0.03.json"
    bench "${sweep[@]}" --resample-temperature 0.3 --output "$out/sim_entrgi_smc_t0.3.json"
    bench "${sweep[@]}" --resample-every 2 --output "$out/sim_entrgi_smc_e2.json"
    bench "${sweep[@]}" --resample-every 8 --output "$out/sim_entrgi_smc_e8.json"
  fi
done
python studies/smc_study.py render "$out" --calibration "$out/calibration.json" --output docs/smc_results.json \
  > "$out/smc.md"
