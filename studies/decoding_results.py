"""Renders the decoding study (studies/run_decoding.sh) as tables: each setting against its baseline, paired.

Every `entrgi-bench` output in the folder is one decoding setting (`sim_*.json`: similarity reward, `lm_*.json`:
lm-judge). Blocks are compared with one block; threshold decoding with the same blocks at fixed steps. For each pair
of settings the differences are taken over the same (prompt, seed): Top@1 reward, the held-out judge of the best
sample, the log SmolLM2 perplexity of the best sample (shown as a ratio), model calls (nfe) and seconds per prompt,
each as mean and 95% normal interval.

Usage: python studies/decoding_results.py runs/decoding --output docs/decoding_results.json > decoding.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from entrgi_pipelines.bench import mean_ci

REWARDS = {"sim": "similarity", "lm": "lm-judge"}
# setting -> its baseline (None: a baseline itself)
BASELINES = {
    "one_block": None,
    "b8_block": "one_block",
    "b8_response": "one_block",
    "b16_block": "one_block",
    "b16_response": "one_block",
    "b8_t0.9": "b8_block",
    "b8_t0.7": "b8_block",
    "b8_t0.5": "b8_block",
    "t32_mgp_fixed": None,
    "t32_mgp_t0.9": "t32_mgp_fixed",
    "t32_mgp_t0.7": "t32_mgp_fixed",
}
LABELS = {
    "one_block": "one block (L=32)",
    "b8_block": "blocks of 8, guidance sees up to the block",
    "b8_response": "blocks of 8, guidance sees the whole response",
    "b16_block": "blocks of 16, guidance sees up to the block",
    "b16_response": "blocks of 16, guidance sees the whole response",
    "b8_t0.9": "blocks of 8, threshold 0.9",
    "b8_t0.7": "blocks of 8, threshold 0.7",
    "b8_t0.5": "blocks of 8, threshold 0.5",
    "t32_mgp_fixed": "T=32, blocks of 8, maskgit_plus, fixed steps",
    "t32_mgp_t0.9": "T=32, blocks of 8, maskgit_plus, threshold 0.9",
    "t32_mgp_t0.7": "T=32, blocks of 8, maskgit_plus, threshold 0.7",
}


def by_pair(records: list[dict]) -> dict:
    return {(r["prompt"], r["target"], r["seed"]): r for r in records}


def metrics(record: dict) -> dict:
    return {
        "top1": record["top1"],
        "judge": record["judge"],
        "log_ppl": math.log(record["perplexity_smollm"]) if record.get("perplexity_smollm") else math.nan,
        "nfe": float(record.get("nfe", math.nan)),
        "seconds": record["seconds"],
    }


def summarise(folder: Path) -> dict:
    runs = {}
    for path in sorted(folder.glob("*.json")):
        prefix, _, setting = path.stem.partition("_")
        if prefix in REWARDS and setting in BASELINES:
            runs[(prefix, setting)] = by_pair(json.loads(path.read_text())["records"])
    result = {}
    for (prefix, setting), records in runs.items():
        rows = [metrics(r) for r in records.values()]
        entry = {
            "reward": REWARDS[prefix],
            "setting": setting,
            "n": len(rows),
            **{k: mean_ci([row[k] for row in rows]) for k in ("top1", "judge", "log_ppl", "nfe", "seconds")},
        }
        base = BASELINES[setting]
        if base and (prefix, base) in runs:
            entry.update(paired(records, runs[(prefix, base)]), baseline=base)
        result[f"{prefix}_{setting}"] = entry
    # the two guidance scopes against each other, at the same blocks
    for prefix in REWARDS:
        for size in ("b8", "b16"):
            a, b = runs.get((prefix, f"{size}_response")), runs.get((prefix, f"{size}_block"))
            if a and b:
                result[f"{prefix}_{size}_response_vs_block"] = {
                    "reward": REWARDS[prefix],
                    "setting": f"{size}_response",
                    "baseline": f"{size}_block",
                    **paired(a, b),
                }
    return result


def paired(records: dict, baseline: dict) -> dict:
    """Mean differences (and 95% intervals) over the (prompt, seed) pairs both runs have."""
    shared = sorted(set(records) & set(baseline))
    diffs = {k: [] for k in ("top1", "judge", "log_ppl", "nfe", "seconds")}
    for key in shared:
        a, b = metrics(records[key]), metrics(baseline[key])
        for k in diffs:
            diffs[k].append(a[k] - b[k])
    return {"paired_n": len(shared), "diff": {k: mean_ci(v) for k, v in diffs.items()}}


def fmt(pair, spec=".3f", sign=True) -> str:
    mean, ci = pair
    if mean != mean:
        return "—"
    text = format(mean, ("+" if sign else "") + spec)
    return text if ci != ci else f"{text} ± {format(ci, spec)}"


def ratio(pair) -> str:
    mean, ci = pair
    if mean != mean:
        return "—"
    if ci != ci:
        return f"{math.exp(mean):.2f}"
    return f"{math.exp(mean):.2f} ({math.exp(mean - ci):.2f}–{math.exp(mean + ci):.2f})"


def markdown(result: dict) -> str:
    lines = []
    for prefix, reward in REWARDS.items():
        entries = [e for key, e in result.items() if key.startswith(prefix + "_") and "n" in e]
        if not entries:
            continue
        lines += [
            f"**{reward} reward** (EntRGi, K=4, L=32, M=3, eta=0.5; T=16 unless stated)",
            "",
            "| setting | n | Top@1 reward | held-out judge | SmolLM2 ppl | nfe | s / prompt | vs | Δ Top@1 | "
            "Δ judge | ppl ratio | Δ nfe | Δ s / prompt |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for setting in BASELINES:
            e = result.get(f"{prefix}_{setting}")
            if e is None:
                continue
            d = e.get("diff")
            ppl = math.exp(e["log_ppl"][0]) if e["log_ppl"][0] == e["log_ppl"][0] else math.nan
            cells = [
                LABELS[setting],
                str(e["n"]),
                fmt(e["top1"], ".3f", False),
                fmt(e["judge"], ".3f", False),
                f"{ppl:.1f}",
                f"{e['nfe'][0]:.1f}",
                f"{e['seconds'][0]:.1f}",
            ]
            if d:
                cells += [
                    LABELS[e["baseline"]],
                    fmt(d["top1"]),
                    fmt(d["judge"]),
                    ratio(d["log_ppl"]),
                    fmt(d["nfe"], ".1f"),
                    fmt(d["seconds"], ".1f"),
                ]
            else:
                cells += ["—"] * 6
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        scopes = [e for key, e in result.items() if key.startswith(prefix + "_") and key.endswith("_vs_block")]
        if scopes:
            lines += [
                f"Guidance scope, {reward} reward: the whole response against up to the current block, same blocks, "
                "paired:",
                "",
                "| blocks | n | Δ Top@1 | Δ judge | ppl ratio | Δ s / prompt |",
                "|---|---|---|---|---|---|",
            ]
            for e in scopes:
                d = e["diff"]
                size = e["baseline"].split("_")[0][1:]
                lines.append(
                    f"| {size} | {e['paired_n']} | {fmt(d['top1'])} | {fmt(d['judge'])} | {ratio(d['log_ppl'])} | "
                    f"{fmt(d['seconds'], '.1f')} |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the study's output folder (entrgi-bench JSON files)")
    parser.add_argument("--output", type=Path, help="write the summary as JSON here")
    parser.add_argument("--render", type=Path, help="render an existing summary JSON instead of a folder")
    args = parser.parse_args(argv)
    result = json.loads(args.render.read_text()) if args.render else summarise(args.folder)
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
