"""CI smoke test of benchmarks/bench_guidance.py at a tiny size: it runs, and its figures hold together."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from entrgi_pipelines import MaskedDiffusionScheduler

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_guidance.py"


def test_bench_guidance_reports_its_floor_and_breakdown():
    B, K, L, T, M = 2, 2, 8, 4, 2
    command = [sys.executable, str(SCRIPT), "--dllm", "tiny", "--reward", "tiny", "--repeats", "1"]
    command += ["-B", str(B), "-K", str(K), "-L", str(L), "-T", str(T), "-M", str(M)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    for field in ("overhead", "guided_over_unguided", "tokens_per_s", "peak_mb"):
        assert math.isfinite(result[field]) and result[field] > 0, field
    assert math.isclose(result["overhead"], result["guided_s"] / result["floor_s"])
    assert math.isclose(result["tokens_per_s"], B * K * L / result["guided_s"])
    terms = result["terms_s"]
    floor = T * terms["F"] + result["guided_steps"] * M * (terms["R"] + terms["S"] + terms["X"])
    assert math.isclose(result["floor_s"], floor)
    # P is the average number of masked rows over the guided steps, as the scheduler's schedule implies
    scheduler = MaskedDiffusionScheduler()
    scheduler.set_timesteps(T)
    masked, rows = L, []
    for i in range(T):
        rows.append(B * K * masked)
        masked -= int(scheduler.num_tokens_to_commit(torch.tensor([masked]), i))
    assert result["guided_steps"] == T and result["masked_rows_P"] == round(sum(rows) / T)
    # the breakdown names the regions and adds up to the instrumented call
    breakdown = result["breakdown_s"]
    for region in ("dLLM forward", "reward-model forward", "backward", "Adam step", "scheduler: sampling"):
        assert breakdown[region] > 0, region
    assert math.isclose(sum(breakdown.values()), result["breakdown_total_s"])


def test_bench_guidance_reports_threshold_decoding_beside_fixed_steps():
    B, K, L, T = 1, 2, 8, 8
    command = [sys.executable, str(SCRIPT), "--dllm", "tiny", "--reward", "tiny", "--repeats", "1", "--no-breakdown"]
    command += ["-B", str(B), "-K", str(K), "-L", str(L), "-T", str(T), "-M", "1"]
    command += ["--block-length", "4", "--threshold", "0.002"]  # exp(-entropy) of a random model is about 1 / V
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    threshold = json.loads(done.stdout.strip().splitlines()[-1])["threshold"]
    assert threshold["fixed_nfe"] == T and 2 <= threshold["nfe"] < T  # at least one call per block
    assert math.isclose(threshold["ms_per_token"], 1e3 * threshold["guided_s"] / (B * K * L))
    assert math.isclose(threshold["speedup"], threshold["fixed_ms_per_token"] / threshold["ms_per_token"])
    assert "dLLM calls instead of 8" in done.stderr
