"""CI smoke test of benchmarks/bench_block_diffusion.py at its tiny `--smoke` shapes: it runs, its figures hold
together, and a rerun resumes from its JSON."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_block_diffusion.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(output: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--smoke", "--output", str(output), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)


def test_bench_block_diffusion_smoke_figures_hold_together_and_a_rerun_resumes(tmp_path):
    output = tmp_path / "bench.json"
    done = run(output)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == result["summary"]

    rows = result["timing"]
    assert len(rows) == 2 * 2 * 2  # blocks x guided x cache at the smoke's one length
    for row in rows.values():
        L = row["L"]
        # both are rounded in the JSON (ms to 0.1, ms per token to 0.01)
        assert math.isclose(row["ms_per_token"], row["ms"] / L, abs_tol=0.005 + 0.05 / L)
        assert 0 < row["dllm_ms"] <= row["ms"]
        calls = row["forward_calls"]
        assert sum(calls.values()) == row["nfe"] == row["row_nfe"]  # every dLLM forward is timed, and counted
        if row["kv_cache"] is None:
            assert set(calls) == {"uncached"}
        else:  # one commit per block the row decoded, one read per step (fewer in the prompt's tail block)
            b, prompt = row["block"], result["settings"]["prompt_tokens"]
            steps_per_block = row["T"] // -(-L // b)
            assert set(calls) <= {"prefill", "read", "commit"} and calls.get("prefill", 0) == int(prompt >= b)
            # every decoded block but the last is committed (the row leaves the batch after its last block)
            assert calls["commit"] == -(-(prompt + L) // b) - prompt // b - 1
            assert calls["commit"] < calls["read"] <= (calls["commit"] + 1) * steps_per_block
    for name, entry in result["summary"]["timing"].items():
        off, on = rows[f"{name}-cache_off"], rows[f"{name}-cache_auto"]
        assert entry["same_tokens"] == (off["tokens"] == on["tokens"]) and entry["same_tokens"]
        assert math.isclose(entry["off_over_on"], off["ms"] / on["ms"], abs_tol=0.01)

    runs = result["threshold"]["runs"]
    assert len(runs) == 12
    for cache in ("auto", "off"):
        alone = runs[f"threshold-batch1-cache_{cache}"]
        for batch in (4, 16):
            together = runs[f"threshold-batch{batch}-cache_{cache}"]
            # rows advance on their own: in a batch each row makes the calls, and gets the tokens, it makes alone
            assert together["row_nfe"] == alone["row_nfe"] and together["tokens"] == alone["tokens"]
        fixed = runs[f"fixed-batch1-cache_{cache}"]
        savings = result["summary"]["threshold"][f"cache_{cache}"]["savings_batch1"]
        assert math.isclose(savings, 1 - alone["mean_row_nfe"] / fixed["mean_row_nfe"], abs_tol=1e-4)

    again = run(output)  # everything is in the JSON already: nothing is rerun
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(output.read_text())
    assert resumed["timing"] == rows and resumed["threshold"]["runs"] == runs
    assert len(resumed["commands"]) == 2

    tables = run(output, "--render")  # the Markdown of docs/results.md, from the JSON alone
    assert tables.returncode == 0 and tables.stdout.count("| yes |") == len(result["summary"]["timing"])

    other = run(output, "--threshold", "0.5")
    assert other.returncode != 0 and "other settings" in other.stderr


def test_bench_rows_full_attention_smoke_counts_every_rows_calls(tmp_path):
    script = SCRIPT.with_name("bench_rows_full_attention.py")
    output = tmp_path / "rows.json"
    command = [sys.executable, str(script), "--smoke", "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV, cwd=SCRIPT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    runs, L = result["runs"], result["settings"]["length"]
    assert len(runs) == 9
    for key, run in runs.items():
        assert len(run["calls_per_row"]) == len(run["tokens"]) == 16
        if key.startswith("fixed"):  # one token per step: every row takes L calls
            assert run["calls_per_row"] == [L] * 16
        if "-rows-" in key:  # a call makes as many forwards as its slowest row
            batch = int(key.split("batch")[1])
            assert run["calls"] == [max(run["calls_per_row"][i : i + batch]) for i in range(0, 16, batch)]
    assert result["summary"]["rows_same_tokens_as_lockstep"]
