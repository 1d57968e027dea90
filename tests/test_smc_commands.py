"""SMC resampling from the command lines: `entrgi-bench --resample smc ...` records the resampling and the diversity
of each prompt's samples, `entrgi generate --resample smc` resamples the guided side, bad settings are refused
before any model is loaded."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from entrgi_pipelines import bench, cli
from entrgi_pipelines.runs import add_resampling_arguments, check_resampling, resampling_kwargs

from .test_bad_inputs import run_main
from .test_interrupts import tiny_bench  # noqa: F401 (a fixture)

SMC = ["--resample", "smc", "--resample-every", "1", "--resample-ess", "1.0", "--resample-temperature", "0.002"]


def test_resampling_arguments_become_pipeline_arguments_only_when_resampling():
    parser = argparse.ArgumentParser()
    add_resampling_arguments(parser)
    assert resampling_kwargs(parser.parse_args([])) == {}
    assert resampling_kwargs(argparse.Namespace()) == {}  # a caller without the flags (the demo) never resamples
    args = parser.parse_args(["--resample", "smc", "--resample-every", "2", "--potential", "guidance"])
    assert resampling_kwargs(args) == {
        "resample": "smc",
        "resample_every": 2,
        "resample_ess": 0.5,
        "resample_temperature": 0.1,
        "potential": "guidance",
    }
    args.num_samples, args.guidance_steps = 4, 3
    check_resampling(args, ["entrgi"])
    with pytest.raises(ValueError, match="--potential guidance"):
        check_resampling(args, ["none", "entrgi"])


def test_bench_records_the_resampling_and_the_diversity_of_each_prompts_samples(tiny_bench):  # noqa: F811
    folder, argv = tiny_bench
    argv[argv.index("-K") + 1] = "3"
    bench.main(argv + SMC + ["--output", str(folder / "smc.json")])
    saved = json.loads((folder / "smc.json").read_text())
    assert saved["config"]["resample"] == "smc" and saved["config"]["resample_temperature"] == 0.002
    for record in saved["records"]:
        smc = record["smc"]
        assert smc["steps"] == [1, 2, 3] and len(smc["ess"]) == len(smc["resampled"]) == 3
        assert len(smc["ancestry"]) == 3 and set(smc["ancestry"]) <= {0, 1, 2}
        assert all(1.0 - 1e-6 <= ess <= 3.0 + 1e-6 for ess in smc["ess"])
        assert record["distinct_samples"] == len(set(record["texts"]))
        assert 0 < record["distinct2_samples"] <= 1
    assert any(any(r["smc"]["resampled"]) for r in saved["records"])
    for method in ("none", "entrgi"):
        summary = saved["summary"][method]
        rows = [r for r in saved["records"] if r["method"] == method]
        assert summary["distinct_samples"] == pytest.approx(sum(r["distinct_samples"] for r in rows) / len(rows))
    # without resampling the records have no SMC field, and the same seed draws the same samples again
    bench.main(argv + ["--output", str(folder / "plain.json")])
    assert all("smc" not in r for r in json.loads((folder / "plain.json").read_text())["records"])
    bench.main(argv + SMC + ["--output", str(folder / "again.json")])
    again = json.loads((folder / "again.json").read_text())["records"]
    assert [(r["texts"], r["smc"]) for r in again] == [(r["texts"], r["smc"]) for r in saved["records"]]


def test_pooled_distinct_bigrams_span_no_two_samples():
    assert bench.pooled_distinct_n([[1, 2, 3], [1, 2, 3]], 2) == 0.5  # two copies: half the bigrams are new
    assert bench.pooled_distinct_n([[1, 2], [2, 1]], 2) == 1.0  # (2, 1) only inside the second sample
    assert bench.pooled_distinct_n([[1], []], 2) != bench.pooled_distinct_n([[1], []], 2)  # no bigram: nan


BAD = {
    "one_sample": (["--resample", "smc", "-K", "1"], "`num_samples_per_prompt` >= 2"),
    "ess_zero": (["--resample-ess", "0"], "--resample-ess: must be a finite number in (0, 1]"),
    "ess_above_one": (["--resample-ess", "1.5"], "--resample-ess: must be a finite number in (0, 1]"),
    "temperature_inf": (["--resample-temperature", "inf"], "--resample-temperature: must be a finite number"),
    "temperature_zero": (["--resample-temperature", "0"], "--resample-temperature: must be a finite number"),
    "every_zero": (["--resample-every", "0"], "--resample-every: must be an integer >= 1"),
    "unknown_potential": (["--potential", "soft"], "--potential: invalid choice"),
    "unknown_resample": (["--resample", "particles"], "--resample: invalid choice"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_resampling_flags_are_refused_before_any_model_is_loaded(capsys, monkeypatch, case):
    argv, message = BAD[case]
    status, err = run_main(bench.main, argv, capsys, monkeypatch)
    assert status == 2 and err.count("\n") == 1 and message in err
    status, err = run_main(cli.main, ["generate", "the cat", "--target", "food", *argv], capsys, monkeypatch)
    assert status == 2 and err.count("\n") == 1 and message in err


def test_the_guidance_potential_with_an_unguided_method_is_refused(capsys, monkeypatch):
    # the unguided method takes no Adam step, so it has no guidance potential
    status, err = run_main(bench.main, ["--resample", "smc", "--potential", "guidance"], capsys, monkeypatch)
    assert status == 2 and "--potential guidance reads the reward of the last Adam step" in err
    status, err = run_main(
        bench.main,
        ["--methods", "entrgi", "--resample", "smc", "--potential", "guidance", "-M", "0"],
        capsys,
        monkeypatch,
    )
    assert status == 2 and "M=0 takes none" in err


def test_cli_generate_resamples_the_guided_side_as_a_process():
    """`entrgi generate --resample smc` on the embedded stack, as a user runs it: the unguided column stays Best-of-N,
    the guided one is EntRGi with SMC."""
    cmd = [sys.executable, "-m", "entrgi_pipelines.cli", "generate", "Describe the sea.", "--target", "food"]
    cmd += ["-K", "3", "-T", "4", "-L", "8", "-M", "1", "--quiet", "--threads", "1", *SMC, "--potential", "guidance"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "unguided (Best-of-N order)" in done.stdout and "+ smc (every 1, guidance)" in done.stdout


def test_the_study_renderer_pairs_settings_on_shared_prompts_and_seeds(tmp_path):
    """studies/smc_study.py render: each setting against EntRGi over the (prompt, seed) pairs all settings hold."""

    def record(prompt, seed, top1, ancestry=None):
        fields = {"prompt": prompt, "target": "t", "seed": seed, "texts": ["a b c", "a b c", "d e"], "top1": top1}
        fields["avg"] = top1 - 0.1
        fields |= {"judge": 0.5, "perplexity_smollm": 20.0, "distinct2_samples": 0.6, "distinct_samples": 2}
        fields |= {"seconds": 2.0 if ancestry else 1.0}
        if ancestry:
            fields["smc"] = {"steps": [4, 8], "ess": [1.5, 3.0], "resampled": [True, False], "ancestry": ancestry}
        return fields

    pairs = [("p1", 0), ("p2", 0), ("p1", 1)]
    runs = {
        "sim_entrgi": [record(p, s, 0.2 + 0.1 * i) for i, (p, s) in enumerate(pairs)],
        "sim_entrgi_smc": [record(p, s, 0.25 + 0.1 * i, [0, 0, 2]) for i, (p, s) in enumerate(pairs)]
        + [record("p3", 0, 9.0, [1, 1, 1])],  # not held by EntRGi: left out of the comparison
    }
    # the same request toward another target is another measurement
    runs["sim_entrgi"].append(record("p1", 0, 0.5) | {"target": "u"})
    runs["sim_entrgi_smc"].append(record("p1", 0, 0.5, [0, 1, 2]) | {"target": "u"})
    # a setting run in two parts (one seed in another lane): the part's records join the setting's
    runs["sim_entrgi_smc@seed1"] = [r for r in runs["sim_entrgi_smc"] if r["seed"] == 1]
    runs["sim_entrgi_smc"] = [r for r in runs["sim_entrgi_smc"] if r["seed"] != 1]
    for name, records in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"records": records}))
    out = tmp_path / "smc.json"
    script = [sys.executable, "studies/smc_study.py", "render", str(tmp_path), "--output", str(out)]
    done = subprocess.run(script, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "src"})
    assert done.returncode == 0, done.stderr
    assert "(3 prompts x seeds [0, 1], n = 4)" in done.stdout
    table = json.loads(out.read_text())["rewards"]["sim"]["equal compute"]
    assert table["n"] == 4 and table["table"]["entrgi_smc"]["ancestors"] == pytest.approx((2 * 3 + 3) / 4)
    assert table["table"]["entrgi_smc"]["resamplings"] == 1 and table["table"]["entrgi"]["ancestors"] == 3
    assert table["paired"]["entrgi_smc - entrgi"]["top1"]["mean"] == pytest.approx(0.05 * 3 / 4)
    assert table["paired"]["entrgi_smc - entrgi"]["seconds"]["mean"] == pytest.approx(1.0)
    # a part written with other settings is refused
    (tmp_path / "sim_entrgi_smc@seed1.json").write_text(json.dumps({"config": {"eta": 2.0}, "records": []}))
    done = subprocess.run(script, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "src"})
    assert done.returncode != 0 and "differ in ['eta']" in done.stderr
