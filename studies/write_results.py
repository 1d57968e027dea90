"""Renders the measured sections of docs/results.md from `entrgi-bench` JSON files (no number is typed by hand).

    PYTHONPATH=src python studies/write_results.py runs/results/results.json [--sweep eta_sweep.json] \
        [--level 3] > docs/results_measured.md
    PYTHONPATH=src python studies/write_results.py --shared lm.json similarity.json   # both rewards, shared pairs

`--shared` renders one table of several runs (e.g. one per guidance reward) restricted to the (prompt, target, seed)
triples that all of them hold, so that every row is measured on the same prompts and seeds.
"""

import argparse
import json
import math
from pathlib import Path

from entrgi_pipelines.bench import JUDGE_NAMES, markdown_table, mean_ci, summarise


def paired(records, a: str, b: str, key: str) -> tuple[float, float, float]:
    """Mean and 95% half-width of a - b over (prompt, seed) pairs, and the fraction where a > b."""
    by = {(r["method"], r["prompt"], r["target"], r["seed"]): r[key] for r in records}
    diffs = [v - by[(b, p, t, s)] for (m, p, t, s), v in by.items() if m == a and (b, p, t, s) in by]
    mean, ci = mean_ci(diffs)
    return mean, ci, sum(d > 0 for d in diffs) / max(len(diffs), 1)


def ratio(log_mean: float, log_ci: float) -> str:
    """A geometric-mean ratio with its interval, from the mean and half-width of the log ratio ("—" when unknown)."""
    if log_mean != log_mean:
        return "—"
    return f"{math.exp(log_mean):.2f} ({math.exp(log_mean - log_ci):.2f}–{math.exp(log_mean + log_ci):.2f})"


def perplexity_cell(value: float | None) -> str:
    """A perplexity with one decimal, "—" when the run has none."""
    return "—" if value is None or value != value else f"{value:.1f}"


def shared_table(files: list[str]) -> str:
    """One row per (run, method) over the (prompt, target, seed) triples every run holds."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    common = set.intersection(*({(r["prompt"], r["target"], r["seed"]) for r in run["records"]} for run in runs))
    if not common:
        raise ValueError("--shared: the runs share no (prompt, target, seed)")
    lines = [
        "| reward | method | n | Top@1 reward | LM judge (best) | MiniLM judge (best) | SmolLM2 perplexity (best) "
        "| bigram perplexity (best) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        reward = run["config"].get("reward", "similarity")
        rows = [r for r in run["records"] if (r["prompt"], r["target"], r["seed"]) in common]
        for method, s in summarise(rows, list(run["summary"])).items():
            lines.append(
                f"| {reward} | {method} | {s['n']} | {s['top1']:.4f} ± {s['top1_ci']:.4f} | "
                f"{s['judge_lm']:.3f} ± {s['judge_lm_ci']:.3f} | "
                f"{s['judge_minilm']:.3f} ± {s['judge_minilm_ci']:.3f} | "
                f"{s['perplexity_smollm']:.1f} | {s['perplexity']:.1f} |"
            )
    prompts = len({(p, t) for p, t, _ in common})
    seeds = sorted({seed for _, _, seed in common})
    return (
        "\n".join(lines) + f"\n\n{prompts} prompts x seeds {seeds} (n = {len(common)} per row), the same for every row."
    )


def main():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("results", nargs="?")
    parser.add_argument("--sweep")
    parser.add_argument("--level", type=int, default=2, help="markdown heading level of the sections")
    parser.add_argument("--shared", nargs="+", metavar="BENCH_JSON", help="only the table of these runs' shared pairs")
    args = parser.parse_args()
    if args.shared:
        print(shared_table(args.shared))
        return
    if args.results is None:
        parser.error("give a results JSON (or --shared FILES)")
    h = "#" * args.level
    run = json.loads(Path(args.results).read_text())
    records, methods, config = run["records"], list(run["summary"]), run["config"]
    for r in records:
        r["log_perplexity"] = math.log(r["perplexity"])
        # Runs before the SmolLM2 judges have no SmolLM2 perplexity: their ratio column shows "—".
        r["log_perplexity_smollm"] = math.log(r.get("perplexity_smollm", math.nan))
    held_out = JUDGE_NAMES[next(iter(run["summary"].values())).get("held_out_judge", "minilm")]
    out = [f"{h} Table", "", markdown_table(run["summary"]), ""]
    out.append(
        f"{config['num_prompts']} prompts; n = prompts x seeds run for each method (seeds "
        f"{config['seeds']}), K={config['num_samples']}, T={config['steps']}, L={config['gen_length']}, "
        f"M={config['guidance_steps']}, eta={config['eta']}, tau={config['tau']}, top_p={config['top_p']}. "
        "Intervals: 95% normal intervals over prompts x seeds. Perplexities (bigram model of held-out corpus text; "
        "SmolLM2-135M-Instruct given the prompt): geometric means over best samples. The held-out judge is the "
        f"{held_out}, the topic judge that did not guide."
    )
    out += [
        "",
        f"{h} Paired differences (same prompt, same seed)",
        "",
        f"| comparison | Top@1 difference | Top@1: share of pairs won | {held_out} difference | bigram perplexity "
        "ratio | SmolLM2 perplexity ratio |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in [
        ("entrgi", "none"),
        ("entrgi", "aps"),
        ("entrgi", "expectation"),
        ("aps", "none"),
        ("expectation", "none"),
    ]:
        if a in methods and b in methods:
            d, ci, win = paired(records, a, b, "top1")
            j, jci, _ = paired(records, a, b, "judge")
            ratios = [ratio(*paired(records, a, b, key)[:2]) for key in ("log_perplexity", "log_perplexity_smollm")]
            cells = [f"{d:+.4f} ± {ci:.4f}", f"{win:.0%}", f"{j:+.3f} ± {jci:.3f}", *ratios]
            out.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    out.append(
        "\nPerplexity ratio: geometric mean over pairs of the best samples' perplexities, a over b, with its 95%"
        " interval (above 1: a's best sample is less fluent)."
    )
    out += ["", f"{h} Ten unguided prompted samples (seed {config['seeds'][0]}, first sample of each prompt)", ""]
    seen = set()
    for r in records:
        if r["method"] == "none" and r["seed"] == config["seeds"][0] and r["prompt"] not in seen and len(seen) < 10:
            seen.add(r["prompt"])
            out.append(f"- **{r['prompt']}** … {r['texts'][0]}")
    out += [
        "",
        f"{h} Best samples side by side (seed {config['seeds'][0]})",
        "",
        "| prompt → target | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    pairs = list(dict.fromkeys((r["prompt"], r["target"]) for r in records if r["seed"] == config["seeds"][0]))
    for prompt, target in pairs[:: max(1, math.ceil(len(pairs) / 5))]:  # five, spread over the prompt file
        prompt_records = {
            r["method"]: r
            for r in records
            if r["seed"] == config["seeds"][0] and r["prompt"] == prompt and r["target"] == target
        }
        cells = [
            f"{prompt_records[m]['best']} *(r={prompt_records[m]['top1']:.3f}, judge="
            f"{prompt_records[m]['judge']:.2f})*".replace("|", "/")
            for m in methods
            if m in prompt_records
        ]
        out.append(f"| {prompt} → {target} | " + " | ".join(cells) + " |")
    if args.sweep:
        sweep = json.loads(Path(args.sweep).read_text())
        c = sweep["config"]
        out += [
            "",
            f"{h} Eta sweep",
            "",
            f"{c['num_prompts']} prompts x seeds {c['seeds']} (n = {c['num_prompts'] * len(c['seeds'])} per point), "
            f"T={c['steps']}, L={c['gen_length']}, other settings as above; one `entrgi-bench` run per point.",
            "",
            "| method | eta | Top@1 | Avg@N | held-out judge | bigram perplexity | SmolLM2 perplexity | distinct-2 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in sweep["points"]:
            eta = "—" if p["eta"] is None else f"{p['eta']:g}"
            out.append(
                f"| {p['method']} | {eta} | {p['top1']:.4f} ± {p['top1_ci']:.4f} | {p['avg']:.4f} | {p['judge']:.3f} | "
                f"{p['perplexity']:.1f} | {perplexity_cell(p.get('perplexity_smollm'))} | {p['distinct2']:.3f} |"
            )
    print("\n".join(out))


if __name__ == "__main__":
    main()
