"""The scripts that turn `entrgi-bench` outputs into the published tables: what they refuse and what they keep."""

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from entrgi_pipelines import RewardGuidance

ROOT = Path(__file__).resolve().parents[1]


def record(method: str, seed: int, prompt: str, top1: float) -> dict:
    return {
        "method": method,
        "seed": seed,
        "prompt": prompt,
        "target": f"{prompt} topic",
        "texts": ["a", "b"],
        "rewards": [top1, top1 - 1.0],
        "best": "a",
        "top1": top1,
        "avg": top1 - 0.5,
        "judge": 0.5,
        "judge_minilm": 0.5,
        "judge_lm": 0.25,
        "held_out_judge": "minilm",
        "perplexity": 10.0,
        "perplexity_smollm": 20.0,
        "distinct2": 1.0,
        "seconds": 1.0,
    }


def bench_file(path: Path, methods, seeds, prompts, eta=0.5, reward="lm-judge", top1=lambda m, s, p: 1.0) -> Path:
    records = [record(m, s, p, top1(m, s, p)) for m in methods for s in seeds for p in prompts]
    config = {
        "prompts": None,
        "num_prompts": len(prompts),
        "methods": list(methods),
        "seeds": list(seeds),
        "num_samples": 2,
        "steps": 4,
        "gen_length": 4,
        "guidance_steps": 1,
        "eta": eta,
        "tau": 0.7,
        "top_p": 0.95,
        "dllm": "v2",
        "reward": reward,
        "batch_size": 4,
    }
    summary = {m: {"top1": 0.0} for m in methods}
    path.write_text(json.dumps({"config": config, "summary": summary, "records": records}))
    return path


def script(path: str, *args: str, capsys, monkeypatch) -> str:
    """Runs a studies/ script as `python path args...` would (in this process: no second torch import)."""
    monkeypatch.setattr(sys, "argv", [path, *args])
    capsys.readouterr()
    runpy.run_path(str(ROOT / path), run_name="__main__")
    return capsys.readouterr().out


@pytest.fixture
def run_script(capsys, monkeypatch):
    return lambda path, *args: script(path, *args, capsys=capsys, monkeypatch=monkeypatch)


def test_merge_refuses_runs_of_different_rewards(tmp_path, run_script):
    a = bench_file(tmp_path / "a.json", ["entrgi"], [0], ["p0", "p1"])
    b = bench_file(tmp_path / "b.json", ["aps"], [0], ["p0", "p1"], reward="similarity")
    with pytest.raises(ValueError, match=r"\['reward'\]"):
        run_script("studies/merge_bench.py", str(a), str(b), "--output", str(tmp_path / "m.json"))
    assert not (tmp_path / "m.json").exists()


def test_merge_keeps_every_record(tmp_path, run_script):
    a = bench_file(tmp_path / "a.json", ["none", "entrgi"], [0, 1], ["p0", "p1"])
    b = bench_file(tmp_path / "b.json", ["aps"], [0, 1], ["p0", "p1"])
    run_script("studies/merge_bench.py", str(a), str(b), "--output", str(tmp_path / "m.json"))
    merged = json.loads((tmp_path / "m.json").read_text())
    assert len(merged["records"]) == 12
    assert list(merged["summary"]) == ["none", "aps", "entrgi"]
    assert merged["config"]["reward"] == "lm-judge"


def test_sweep_of_bench_files_uses_only_the_shared_pairs(tmp_path, run_script):
    # The main run holds 3 prompts, the sweep runs 2: the eta-0.5 point must be measured on those 2 only.
    main = bench_file(
        tmp_path / "main.json", ["none", "entrgi"], [0, 1], ["p0", "p1", "p2"], top1=lambda m, s, p: float(p == "p2")
    )
    low = bench_file(tmp_path / "low.json", ["entrgi"], [0, 1], ["p0", "p1"], eta=0.1, top1=lambda m, s, p: s + 2.0)
    run_script("studies/eta_sweep.py", "--bench", str(main), str(low), "--output", str(tmp_path / "sweep.json"))
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    points = {(p["method"], p["eta"]): p for p in sweep["points"]}
    assert set(points) == {("none", None), ("entrgi", 0.1), ("entrgi", 0.5)}
    assert points[("entrgi", 0.5)]["top1"] == 0.0  # p2 (top1 = 1) is not in the sweep
    assert points[("entrgi", 0.5)]["n"] == 4
    assert points[("entrgi", 0.1)]["top1"] == pytest.approx(2.5)
    assert sweep["config"]["num_prompts"] == 2 and sweep["config"]["seeds"] == [0, 1]


def test_sweep_refuses_bench_files_of_other_settings(tmp_path, run_script):
    a = bench_file(tmp_path / "a.json", ["entrgi"], [0], ["p0"])
    b = bench_file(tmp_path / "b.json", ["entrgi"], [0], ["p0"], eta=2.0, reward="similarity")
    with pytest.raises(ValueError, match=r"\['reward'\]"):
        run_script("studies/eta_sweep.py", "--bench", str(a), str(b), "--output", str(tmp_path / "s.json"))


def test_shared_table_rows_are_measured_on_the_same_pairs(tmp_path, run_script):
    lm = bench_file(tmp_path / "lm.json", ["none", "entrgi"], [0, 1], ["p0", "p1"])
    sim = bench_file(
        tmp_path / "sim.json",
        ["none", "entrgi"],
        [0, 1, 2],
        ["p0", "p1", "p2"],
        reward="similarity",
        top1=lambda m, s, p: 5.0 if s == 2 or p == "p2" else 3.0,
    )
    table = run_script("studies/write_results.py", "--shared", str(lm), str(sim))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| similarity")]
    assert [row[2] for row in rows] == ["4", "4"]  # 2 prompts x seeds 0, 1: seed 2 and p2 left out
    assert all(row[3].startswith("3.0000") for row in rows)
    assert "n = 4 per row" in table


def test_rendered_page_quotes_the_measured_numbers(tmp_path, run_script):
    run = bench_file(
        tmp_path / "run.json",
        ["none", "entrgi"],
        [0, 1],
        ["p0", "p1", "p2"],
        top1=lambda m, s, p: 1.0 + (m == "entrgi"),
    )
    merged = tmp_path / "merged.json"
    run_script("studies/merge_bench.py", str(run), "--output", str(merged))
    page = run_script("studies/write_results.py", str(merged), "--level", "3")
    assert "### Table" in page and "\n## " not in page
    entrgi_vs_none = next(line for line in page.splitlines() if line.startswith("| entrgi − none"))
    assert "+1.0000 ± 0.0000" in entrgi_vs_none and "100%" in entrgi_vs_none
    assert math.isclose(json.loads(merged.read_text())["summary"]["entrgi"]["top1"], 2.0)


def test_soft_hard_probe_changes_nothing_and_reads_zero_gap_for_aps(pipe, reward_model, tmp_path):
    probe_module = runpy.run_path(str(ROOT / "studies/soft_hard_gap.py"))  # not as __main__: only the definitions
    fast = dict(gen_length=6, num_inference_steps=3, num_samples_per_prompt=2)
    figures = {}
    for method in ("aps", "expectation"):
        plain = pipe(
            ["the cat", "why"],
            callback_on_step_end=RewardGuidance(reward_model, guidance=method, guidance_steps=2),
            generator=torch.Generator().manual_seed(0),
            **fast,
        )
        probe = probe_module["SoftHardProbe"](reward_model, guidance=method, guidance_steps=2)
        probed = pipe(
            ["the cat", "why"], callback_on_step_end=probe, generator=torch.Generator().manual_seed(0), **fast
        )
        # The extra no-gradient scoring draws nothing and changes no logit: the same samples and rewards.
        assert torch.equal(plain.sequences, probed.sequences) and torch.equal(plain.rewards, probed.rewards)
        figures[method] = probe_module["method_figures"](probe.pairs, 2)
        assert figures[method]["pairs"] == 3 * 2 * 4  # denoising steps x Adam steps x rows
    assert abs(figures["aps"]["gap"]) < 1e-6 and figures["aps"]["correlation"] > 0.999
    assert abs(figures["expectation"]["gap"]) > 1e-4  # the expected embedding is not a sampled token's
    config = {"reward": "similarity", "num_prompts": 2, "seeds": [0], "num_samples": 2, "steps": 3, "gen_length": 6}
    config |= {"guidance_steps": 2, "eta": 0.5}
    report = {"config": config, "methods": {m: {**f, "top1": 0.5} for m, f in figures.items()}}
    (tmp_path / "gap.json").write_text(json.dumps(report))
    table = probe_module["render"]([str(tmp_path / "gap.json")])
    aps_row = next(line for line in table.splitlines() if line.startswith("| similarity | aps |"))
    assert "| 24 |" in aps_row and "0.0000 ± 0.0000" in aps_row
