#!/usr/bin/env bash
# The SMC resampling study of docs/results.md Part 3 (issue 16), in two one-thread lanes of about two hours each
# (run both at once on a 2-core machine), then the tables:
#   - calibration, per reward: CPU seconds per prompt of every setting on the first 4 prompts, and the Best-of-N K
#     whose time matches EntRGi + SMC (studies/smc_study.py calibrate)
#   - both rewards, the first 24 bundled v2 prompts x seeds 0, 1, 2: EntRGi; EntRGi + SMC (hard potential); SMC without
#     guidance; Best-of-N at K = 4 and at equal compute (under lm-judge split between the lanes: seeds 0, 1 and 2)
#   - the sweep, similarity reward, 24 prompts x seed 0: the guidance potential; resample_temperature 0.03 / 0.1 / 0.3
#     and resample_every 2 / 4 / 8 (EntRGi + SMC, hard potential; 0.1 and 4 are the main runs' records)
#   - lanes c and d (about 45 min each, after a and b): the temperature sweep under the lm-judge reward, whose final
#     rewards spread about ten times wider (1 nat): 0.3 / 1 / 3, and the guidance potential, 24 prompts x seed 0
#     (temperature 0.1 and the hard potential: the main runs' records)
# K=4, T=L=16, M=3, eta=0.5, tau=0.7, top-p 0.95, dLLM v2, batches of 4 prompts; SMC: every 4 steps, ESS threshold
# 0.5 K, temperature 0.1, unless the sweep says otherwise. Every part is resumable (--resume): a stopped lane picks up
# at the batch where it stopped.
# Usage: nice -n 5 bash studies/run_smc.sh OUT_DIR a   &   nice -n 5 bash studies/run_smc.sh OUT_DIR b
#        (then lanes c and d the same way)
#        bash studies/run_smc.sh OUT_DIR render   (OUT_DIR/smc.md and docs/smc_results.json)
set -euo pipefail
out=${1:-runs/smc}
lane=${2:-all}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONPATH=src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# --guidance-scope block: the default when the study began; with one block it is the same computation as 'response'
common=(-T 16 -L 16 -M 3 --eta 0.5 --tau 0.7 --top-p 0.95 --dllm v2 --batch-size 4 --threads 1 --guidance-scope block)
bench() { python -m entrgi_pipelines.bench --resume "$@" > "${@: -1}.log" 2>&1; }
smc=(--resample smc)
calibrate() {  # reward, tag, Best-of-N sizes: prints the equal-compute K
  [ -f "$out/calibration_$2.json" ] || python studies/smc_study.py calibrate --reward "$1" --num-prompts 4 \
    --bon-samples "${@:3}" --output "$out/calibration_$2.json" > "$out/calibration_$2.log" 2>&1
  python -c "import json, sys; print(json.load(open(sys.argv[1]))['bon_samples'])" "$out/calibration_$2.json"
}
main() {  # reward, seeds, settings... (the first 24 prompts)
  bench --reward "$1" --num-prompts 24 --seeds $2 "${common[@]}" "${@:3}"
}
sweep() {  # name, settings... (reward: $reward, similarity unless set)
  local tag; tag=$([ "${reward:-similarity}" = similarity ] && echo sim || echo lm)
  bench --reward "${reward:-similarity}" --num-prompts 24 --seeds 0 -K 4 --methods entrgi "${common[@]}" "${smc[@]}" \
    "${@:2}" --output "$out/${tag}_entrgi_smc_$1.json"
}
case $lane in
  b | all)  # about 50 CPU-s per lm-judge guided prompt
    lm_k=$(calibrate lm-judge lm 24 32 40 48 56 64)
    main lm-judge "0 1 2" -K 4 --methods entrgi "${smc[@]}" --output "$out/lm_entrgi_smc.json"
    main lm-judge "0 1" -K "$lm_k" --methods none --output "$out/lm_bon_equal.json"
    ;;&
  a | all)
    sim_k=$(calibrate similarity sim 4 8 12 16)
    main lm-judge "0 1 2" -K 4 --methods entrgi --output "$out/lm_entrgi.json"
    main lm-judge "0 1 2" -K 4 --methods none --output "$out/lm_bon.json"
    main lm-judge "0 1 2" -K 4 --methods none "${smc[@]}" --output "$out/lm_none_smc.json"
    main similarity "0 1 2" -K 4 --methods entrgi --output "$out/sim_entrgi.json"
    main similarity "0 1 2" -K 4 --methods entrgi "${smc[@]}" --output "$out/sim_entrgi_smc.json"
    main similarity "0 1 2" -K 4 --methods none "${smc[@]}" --output "$out/sim_none_smc.json"
    main similarity "0 1 2" -K 4 --methods none --output "$out/sim_bon.json"
    main similarity "0 1 2" -K "$sim_k" --methods none --output "$out/sim_bon_equal.json"
    # the third seed of lane b's equal-compute Best-of-N (the renderer joins `<name>@<part>.json` to `<name>.json`)
    lm_k=$(calibrate lm-judge lm 24 32 40 48 56 64)
    main lm-judge 2 -K "$lm_k" --methods none --output "$out/lm_bon_equal@seed2.json"
    sweep t0.03 --resample-temperature 0.03
    sweep e8 --resample-every 8
    sweep guidance --potential guidance
    sweep t0.3 --resample-temperature 0.3
    sweep e2 --resample-every 2
    ;;&
  c | all)
    reward=lm-judge sweep t1 --resample-temperature 1
    reward=lm-judge sweep t0.3 --resample-temperature 0.3
    ;;&
  d | all)
    reward=lm-judge sweep t3 --resample-temperature 3
    reward=lm-judge sweep guidance --potential guidance
    ;;&
  render | all)
    python studies/smc_study.py render "$out" --calibration "$out"/calibration_*.json --output docs/smc_results.json \
      > "$out/smc.md"
    ;;
esac
