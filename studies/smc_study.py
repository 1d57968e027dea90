"""The SMC resampling study (issue 16; studies/run_smc.sh): calibrate equal compute, then render the tables.

    PYTHONPATH=src python studies/smc_study.py calibrate --num-prompts 4 --output runs/smc/calibration_sim.json
    PYTHONPATH=src python studies/smc_study.py render runs/smc --calibration runs/smc/calibration_*.json \
        --output docs/smc_results.json > runs/smc/smc.md

`calibrate` times one generation call per setting on the same first batch of prompts (seed 0), in CPU seconds of
this process (one thread: what the call computes, not how long it waited for a shared core), and reports the number
of Best-of-N samples whose CPU time per prompt is closest to EntRGi+SMC's: Best-of-N "with as many more samples as
the same seconds buy".

`render` reads every `entrgi-bench` output of the folder (one setting each, named `<reward>_<setting>.json`) and
prints, per reward: the table of all settings on the (prompt, seed) pairs they share (Top@1, Avg@N, held-out judge,
SmolLM2 perplexity, diversity of the K samples, resampling, seconds per prompt), and the paired differences of each
setting against EntRGi and of the other equal-compute pairs (mean and 95% interval over the same (prompt, target,
seed) triples); `--output` writes the same numbers as JSON, with every run's settings and records.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

# setting (the bench output `<reward>_<setting>.json` of studies/run_smc.sh) -> its label
SETTINGS = {
    "entrgi": "EntRGi",
    "entrgi_smc": "EntRGi + SMC (hard, every 4, T 0.1)",
    "none_smc": "SMC without guidance (hard)",
    "bon": "Best-of-N, K = 4",
    "bon_equal": "Best-of-N, equal compute",
    "entrgi_smc_guidance": "EntRGi + SMC, guidance potential",
    "entrgi_smc_t0.03": "EntRGi + SMC, temperature 0.03",
    "entrgi_smc_t0.3": "EntRGi + SMC, temperature 0.3",
    "entrgi_smc_t1": "EntRGi + SMC, temperature 1",
    "entrgi_smc_t3": "EntRGi + SMC, temperature 3",
    "entrgi_smc_e2": "EntRGi + SMC, every 2 steps",
    "entrgi_smc_e8": "EntRGi + SMC, every 8 steps",
}
REWARDS = {"sim": "similarity", "lm": "lm-judge"}
REFERENCE = "entrgi"
# pairs of about equal compute besides those against EntRGi: Best-of-N at the calibrated K costs what EntRGi + SMC
# does, SMC without guidance about what Best-of-N at K = 4 does (studies/smc_study.py calibrate)
EXTRA_COMPARISONS = [("entrgi_smc", "bon_equal"), ("none_smc", "bon")]


def calibrate(args) -> dict:
    import torch

    from entrgi_pipelines import bench
    from entrgi_pipelines.runs import guided_samples, resampling_kwargs

    torch.set_num_threads(1)
    common = ["-K", "4", "-T", "16", "-L", "16", "-M", "3", "--dllm", "v2", "--reward", args.reward]
    parser = bench.build_parser()
    base = parser.parse_args(common)
    pipe, (reward_model, reward_tokenizer), _ = bench.load_components(base)
    prompts = bench.read_prompts(None, args.num_prompts, "v2")
    texts, targets = [r["prompt"] for r in prompts], [r.get("target") or r["prompt"] for r in prompts]
    smc = ["--resample", "smc"]
    runs = [("entrgi", "entrgi", 4, []), ("entrgi_smc", "entrgi", 4, smc), ("none_smc", "none", 4, smc)]
    runs += [("entrgi_smc_guidance", "entrgi", 4, [*smc, "--potential", "guidance"])]
    runs += [(f"bon_k{k}", "none", k, []) for k in args.bon_samples]
    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so that a slower moment of the machine touches every setting
        for name, method, k, flags in runs:
            settings = parser.parse_args(common + ["-K", str(k), *flags])
            start = time.process_time()
            guided_samples(
                pipe,
                reward_model,
                reward_tokenizer,
                texts,
                targets,
                method,
                settings,
                bench.batch_generator(0, 0),
                **resampling_kwargs(settings),
            )
            seconds.setdefault(name, []).append((time.process_time() - start) / len(texts))
    cpu = {name: min(values) for name, values in seconds.items()}  # the least-disturbed repeat
    target = cpu["entrgi_smc"]
    bon = min(args.bon_samples, key=lambda k: abs(cpu[f"bon_k{k}"] - target))
    return {"reward": args.reward, "num_prompts": args.num_prompts, "cpu_seconds_per_prompt": cpu, "bon_samples": bon}


def mean_ci(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]
    n = len(values)
    if n < 2:
        return (values[0] if values else math.nan), math.nan
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * sd / math.sqrt(n)


def record_metrics(record: dict) -> dict:
    smc = record.get("smc")
    return {
        "top1": record["top1"],
        "avg": record["avg"],
        "judge": record["judge"],
        "log_ppl": math.log(record["perplexity_smollm"]),
        "distinct2_samples": record["distinct2_samples"],
        "distinct_samples": record["distinct_samples"],
        "ancestors": len(set(smc["ancestry"])) if smc else len(record["texts"]),
        "resamplings": sum(smc["resampled"]) if smc else 0,
        "min_ess": min(smc["ess"]) if smc else math.nan,
        "seconds": record["seconds"],
    }


def load(folder: Path) -> dict[str, dict[str, list[dict]]]:
    """reward -> setting -> records (the bench outputs `<reward>_<setting>.json`; a setting run in parts, such as
    one seed in another lane, adds `<reward>_<setting>@<part>.json`, whose records join the setting's)."""
    from entrgi_pipelines.checkpoint import EXTENSIBLE, RESUMABLE_DIFFERENCES

    runs: dict[str, dict[str, list[dict]]] = {}
    configs: dict[tuple[str, str], tuple[Path, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        reward, _, setting = path.stem.partition("@")[0].partition("_")
        if reward not in REWARDS or setting not in SETTINGS:
            continue
        saved = json.loads(path.read_text())
        first, config = configs.setdefault((reward, setting), (path, saved.get("config") or {}))
        other = saved.get("config") or {}
        differing = [
            k
            for k in sorted(set(config) | set(other))
            if k not in RESUMABLE_DIFFERENCES + EXTENSIBLE and config.get(k) != other.get(k)
        ]
        if differing:
            raise ValueError(f"{path.name} and {first.name} differ in {differing}: parts of a setting must match.")
        runs.setdefault(reward, {}).setdefault(setting, []).extend(saved["records"])
    return runs


def render(args) -> tuple[str, dict]:
    # one calibration per reward, keyed like the runs (sim, lm)
    calibrations = [json.loads(Path(path).read_text()) for path in args.calibration or []]
    calibration = {tag: c for c in calibrations for tag, name in REWARDS.items() if c["reward"] == name}
    runs = load(Path(args.folder))
    # the tables, and every run's settings and records, so that the JSON holds all the numbers
    sources = {path.stem: json.loads(path.read_text()) for path in sorted(Path(args.folder).glob("*.json"))}
    sources = {
        name: {"config": run.get("config"), "records": run["records"]}
        for name, run in sources.items()
        if "records" in run
    }
    lines, result = [], {"calibration": calibration, "rewards": {}, "runs": sources}
    for reward, settings in sorted(runs.items(), key=lambda item: list(REWARDS).index(item[0])):
        order = [s for s in SETTINGS if s in settings]
        # a request appears with several targets: a (prompt, target, seed) triple is one measurement
        pairs = {s: {(r["prompt"], r["target"], r["seed"]): record_metrics(r) for r in settings[s]} for s in order}
        main = [s for s in order if not s.startswith("entrgi_smc_")]
        sweep = [s for s in order if s not in main]
        sweep = [s for s in ("entrgi", "entrgi_smc") if s in pairs and sweep] + sweep  # the sweep's middle values
        result["rewards"][reward] = {}
        for title, group in (("Equal compute", main), ("Sweep", sweep)):
            if not group:
                continue
            members = group
            shared = set.intersection(*(set(pairs[s]) for s in members))
            k_of = {s: len(settings[s][0]["texts"]) for s in members}
            prompts, seeds = len({(p, t) for p, t, _ in shared}), sorted({seed for _, _, seed in shared})
            lines += [
                f"#### {REWARDS.get(reward, reward)} reward: {title.lower()} ({prompts} prompts x seeds {seeds}, "
                f"n = {len(shared)})",
                "",
                "| setting | K | Top@1 | Avg@N | held-out judge (best) | SmolLM2 ppl (best) | distinct-2 of the K "
                "| distinct samples | ancestors left | resamplings | wall s / prompt |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            table = {}
            for s in group:
                rows = [pairs[s][key] for key in sorted(shared)]
                stats = {m: mean_ci([row[m] for row in rows]) for m in rows[0]}
                table[s] = {m: v[0] for m, v in stats.items()} | {"n": len(rows), "K": k_of[s]}
                lines.append(
                    f"| {SETTINGS[s]}{f' ({k_of[s]})' if s == 'bon_equal' else ''} | {k_of[s]} "
                    f"| {stats['top1'][0]:.4f} ± {stats['top1'][1]:.4f} "
                    f"| {stats['avg'][0]:.4f} ± {stats['avg'][1]:.4f} "
                    f"| {stats['judge'][0]:.3f} ± {stats['judge'][1]:.3f} | {math.exp(stats['log_ppl'][0]):.1f} "
                    f"| {stats['distinct2_samples'][0]:.3f} | {stats['distinct_samples'][0]:.2f} "
                    f"| {stats['ancestors'][0]:.2f} | {stats['resamplings'][0]:.2f} | {stats['seconds'][0]:.2f} |"
                )
            lines += ["", "Paired differences over the same (prompt, target, seed):", ""]
            lines += [
                "| setting | against | Top@1 | Avg@N | held-out judge | SmolLM2 ppl ratio | distinct-2 of the K "
                "| wall s / prompt |",
                "|---|---|---|---|---|---|---|---|",
            ]
            diffs = {}
            comparisons = [(s, REFERENCE) for s in group if s != REFERENCE and REFERENCE in group]
            comparisons += [(s, ref) for s, ref in EXTRA_COMPARISONS if s in group and ref in group]
            keys = sorted(shared)
            for s, ref in comparisons:
                d = {m: mean_ci([pairs[s][k][m] - pairs[ref][k][m] for k in keys]) for m in pairs[s][keys[0]]}
                diffs[f"{s} - {ref}"] = {m: {"mean": v[0], "ci": v[1]} for m, v in d.items()}
                ppl = d["log_ppl"]
                lines.append(
                    f"| {SETTINGS[s]} | {SETTINGS[ref]} | {d['top1'][0]:+.4f} ± {d['top1'][1]:.4f} "
                    f"| {d['avg'][0]:+.4f} ± {d['avg'][1]:.4f} | {d['judge'][0]:+.3f} ± {d['judge'][1]:.3f} "
                    f"| {math.exp(ppl[0]):.2f} ({math.exp(ppl[0] - ppl[1]):.2f}–{math.exp(ppl[0] + ppl[1]):.2f}) "
                    f"| {d['distinct2_samples'][0]:+.3f} ± {d['distinct2_samples'][1]:.3f} "
                    f"| {d['seconds'][0]:+.2f} ± {d['seconds'][1]:.2f} |"
                )
            lines.append("")
            result["rewards"][reward][title.lower()] = {"table": table, "paired": diffs, "n": len(shared)}
        if reward in calibration:
            cal = calibration[reward]
            lines += [
                f"CPU seconds per prompt on the first {cal['num_prompts']} prompts (one thread, seed 0; "
                f"{cal['reward']} reward): "
                + ", ".join(f"{name} {value:.2f}" for name, value in cal["cpu_seconds_per_prompt"].items())
                + f"; Best-of-N at equal compute: K = {cal['bon_samples']}.",
                "",
            ]
    return "\n".join(lines), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate")
    cal.add_argument("--reward", default="similarity")
    cal.add_argument("--num-prompts", type=int, default=4)
    cal.add_argument("--repeats", type=int, default=1)
    cal.add_argument("--bon-samples", type=int, nargs="+", default=[4, 8, 12, 16])
    cal.add_argument("--output", required=True)
    ren = sub.add_parser("render")
    ren.add_argument("folder")
    ren.add_argument("--calibration", nargs="*", help="the calibrate outputs, one per reward")
    ren.add_argument("--output")
    args = parser.parse_args()
    if args.command == "calibrate":
        result = calibrate(args)
        Path(args.output).write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return
    text, result = render(args)
    print(text)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
