"""Reward against fluency as the guidance learning rate eta goes from 0.1 to 2, for each method.

    PYTHONPATH=src python studies/eta_sweep.py --num-prompts 8 --seeds 0 1 --output docs/eta_sweep.json \
        --plot docs/eta_sweep.png

Each point is one `entrgi-bench` run (embedded stack): mean Top@1 reward of the best sample against the geometric
mean perplexity of that sample under the held-out bigram model. Best-of-N (`none`, no eta) is drawn as a reference.
On a few cores, run parts of the sweep as parallel one-thread processes (`--methods`, `--etas`, `--output` per
part) and combine them with `--merge part1.json part2.json ... --output all.json --plot sweep.png`.

A sweep can also be made of `entrgi-bench --output` files, one per eta (any methods in each), with `--bench
a.json b.json ...`: each (method, eta) becomes a point over the (prompt, target, seed) triples that every file holds,
so a main run on more prompts contributes its matching subset (studies/run_results_v2.sh makes the LM-judge sweep
this way; `--fluency smollm` puts SmolLM2 perplexity on the plot's x axis).
"""

import argparse
import json
from pathlib import Path

from entrgi_pipelines import bench, runs

# Settings every part of a merged sweep must share.
SHARED = ("num_prompts", "seeds", "steps", "gen_length", "dllm", "reward")
METHODS = ("none", "expectation", "aps", "entrgi")


def run_points(args) -> list[dict]:
    common = ["--num-prompts", str(args.num_prompts), "--seeds", *map(str, args.seeds)]
    common += ["-T", str(args.steps), "-L", str(args.gen_length)]
    common += ["--threads", str(args.threads)] if args.threads else []
    common += ["--reward", args.reward] + (["--dllm", args.dllm] if args.dllm else [])
    points = []
    for method in args.methods:
        for eta in [None] if method == "none" else args.etas:
            argv = ["--methods", method, *common] + ([] if eta is None else ["--eta", str(eta)])
            summary = bench.run(bench.build_parser().parse_args(argv))["summary"][method]
            points.append({"method": method, "eta": eta, **summary})
            print(json.dumps(points[-1]), flush=True)
    return points


def merge_points(files: list[str]) -> tuple[dict, list[dict]]:
    parts = [json.loads(Path(f).read_text()) for f in files]
    config = dict(parts[0]["config"])
    for f, part in zip(files[1:], parts[1:]):
        differing = [k for k in SHARED if part["config"].get(k) != config.get(k)]
        if differing:
            raise ValueError(f"--merge: {f} differs from {files[0]} in {differing}; merge sweeps of the same settings.")
    points = [p for part in parts for p in part["points"]]
    seen = set()
    for p in points:
        if (p["method"], p["eta"]) in seen:
            raise ValueError(f"--merge: the point method={p['method']} eta={p['eta']} appears in two files.")
        seen.add((p["method"], p["eta"]))
    points.sort(key=lambda p: (METHODS.index(p["method"]), p["eta"] or 0.0))
    config["methods"] = [m for m in METHODS if any(p["method"] == m for p in points)]
    config["etas"] = sorted({p["eta"] for p in points if p["eta"] is not None})
    return config, points


# Settings every bench file of a sweep must share (eta may differ; prompts and seeds are intersected).
BENCH_SHARED = ("prompts", "num_samples", "steps", "gen_length", "guidance_steps", "tau", "top_p", "dllm", "reward")


def bench_points(files: list[str]) -> tuple[dict, list[dict]]:
    from entrgi_pipelines.bench import summarise

    runs = [json.loads(Path(f).read_text()) for f in files]
    first = runs[0]["config"]
    for f, run in zip(files[1:], runs[1:]):
        differing = [k for k in BENCH_SHARED if run["config"].get(k) != first.get(k)]
        if differing:
            raise ValueError(f"--bench: {f} differs from {files[0]} in {differing}; sweep runs of the same settings.")
    keys = [{(r["prompt"], r["target"], r["seed"]) for r in run["records"]} for run in runs]
    common = set.intersection(*keys)
    if not common:
        raise ValueError("--bench: the files share no (prompt, target, seed): run them on the same prompts and seeds.")
    points, seen = [], set()
    for run in runs:
        eta = run["config"]["eta"]
        for method in run["summary"]:
            point_eta = None if method == "none" else eta
            if (method, point_eta) in seen:
                continue  # Best-of-N does not depend on eta: one point, from the first file that has it
            seen.add((method, point_eta))
            rows = [
                r for r in run["records"] if r["method"] == method and (r["prompt"], r["target"], r["seed"]) in common
            ]
            points.append({"method": method, "eta": point_eta, **summarise(rows, [method])[method]})
    points.sort(key=lambda p: (METHODS.index(p["method"]), p["eta"] or 0.0))
    seeds = sorted({seed for _, _, seed in common})
    config = {k: first.get(k) for k in BENCH_SHARED}
    config |= {
        "num_prompts": len({(p, t) for p, t, _ in common}),
        "seeds": seeds,
        "methods": [m for m in METHODS if any(p["method"] == m for p in points)],
        "etas": sorted({p["eta"] for p in points if p["eta"] is not None}),
        "files": files,
    }
    return config, points


def plot(config: dict, points: list[dict], path: str, fluency: str = "bigram") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = "perplexity" if fluency == "bigram" else "perplexity_smollm"
    guided = [m for m in config["methods"] if m != "none"]
    for method, marker in zip(guided, "osD^"):
        rows = sorted((p for p in points if p["method"] == method), key=lambda p: p["eta"])
        ax.plot([p[x] for p in rows], [p["top1"] for p in rows], marker=marker, label=method)
        for p in rows:
            ax.annotate(f"η={p['eta']:g}", (p[x], p["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for p in points:
        if p["method"] == "none":
            ax.scatter([p[x]], [p["top1"]], marker="*", s=150, color="black", label="Best-of-N (none)")
    if fluency == "bigram":
        ax.set_xlabel("perplexity of the best sample (held-out bigram model) — lower is more fluent")
    else:
        ax.set_xlabel("SmolLM2 perplexity of the best sample, given the prompt (lower: more fluent)")
    if config.get("reward", "similarity") == "lm-judge":
        ax.set_ylabel("Top@1 reward (SmolLM2 mean log p of the target, nats)")
    else:
        ax.set_ylabel("Top@1 reward (MiniLM similarity to target)")
    prompts, seeds = config["num_prompts"], len(config["seeds"])
    reward = "LM-judge reward, " if config.get("reward") == "lm-judge" else ""
    ax.set_title(
        f"Reward vs fluency as η varies\n({reward}{prompts} prompts x {seeds} seeds, n={prompts * seeds})", fontsize=11
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--etas", nargs="+", type=float, default=[0.1, 0.5, 1.0, 2.0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("-T", "--steps", type=int, default=32)
    parser.add_argument("-L", "--gen-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dllm", help="embedded dLLM version (v1, v2) or a folder, as entrgi-bench takes it")
    runs.add_reward_argument(parser)
    parser.add_argument("--merge", nargs="+", metavar="SWEEP_JSON", help="combine earlier sweep outputs, run nothing")
    parser.add_argument(
        "--bench", nargs="+", metavar="BENCH_JSON", help="sweep of entrgi-bench outputs (one eta each), run nothing"
    )
    parser.add_argument("--output", default="eta_sweep.json")
    parser.add_argument("--plot", help="PNG path for the reward-vs-perplexity plot")
    parser.add_argument("--fluency", choices=("bigram", "smollm"), default="bigram", help="perplexity on the x axis")
    args = parser.parse_args()
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from none, expectation, aps, entrgi.")
    if args.merge and args.bench:
        parser.error("--merge and --bench: give one (sweep outputs or entrgi-bench outputs)")
    if args.bench:
        config, points = bench_points(args.bench)
    elif args.merge:
        config, points = merge_points(args.merge)
    else:
        config = {k: v for k, v in vars(args).items() if k not in ("merge", "output", "plot")}
        points = run_points(args)
    Path(args.output).write_text(json.dumps({"config": config, "points": points}, indent=1))
    if args.plot:
        plot(config, points, args.plot, args.fluency)


if __name__ == "__main__":
    main()
