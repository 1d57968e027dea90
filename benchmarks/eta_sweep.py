"""Reward against fluency as the guidance learning rate eta goes from 0.1 to 2, for each method.

    PYTHONPATH=src python benchmarks/eta_sweep.py --num-prompts 8 --seeds 0 --output docs/eta_sweep.json \
        --plot docs/eta_sweep.png

Each point is one `entrgi-bench` run (embedded stack): mean Top@1 reward of the best sample against the geometric
mean perplexity of that sample under the held-out bigram model. Best-of-N (no eta) is drawn as a reference.
"""

import argparse
import json
from pathlib import Path

from entrgi_pipelines import bench


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etas", nargs="+", type=float, default=[0.1, 0.5, 1.0, 2.0])
    parser.add_argument("--methods", nargs="+", default=["expectation", "aps", "entrgi"])
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("-T", "--steps", type=int, default=32)
    parser.add_argument("-L", "--gen-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default="eta_sweep.json")
    parser.add_argument("--plot", default="eta_sweep.png")
    args = parser.parse_args()

    common = [
        "--num-prompts",
        str(args.num_prompts),
        "--seeds",
        *map(str, args.seeds),
        "-T",
        str(args.steps),
        "-L",
        str(args.gen_length),
    ] + (["--threads", str(args.threads)] if args.threads else [])
    points = []
    base = bench.run(bench.build_parser().parse_args(["--methods", "none", *common]))["summary"]["none"]
    points.append({"method": "none", "eta": None, **base})
    for method in args.methods:
        for eta in args.etas:
            summary = bench.run(bench.build_parser().parse_args(["--methods", method, "--eta", str(eta), *common]))
            points.append({"method": method, "eta": eta, **summary["summary"][method]})
            print(json.dumps(points[-1]), flush=True)
    Path(args.output).write_text(json.dumps({"config": vars(args), "points": points}, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, marker in zip(args.methods, "osD^"):
        rows = [p for p in points if p["method"] == method]
        ax.plot([p["perplexity"] for p in rows], [p["top1"] for p in rows], marker=marker, label=method)
        for p in rows:
            ax.annotate(
                f"η={p['eta']:g}", (p["perplexity"], p["top1"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.scatter([base["perplexity"]], [base["top1"]], marker="*", s=150, color="black", label="Best-of-N (none)")
    ax.set_xlabel("perplexity of the best sample (held-out bigram model) — lower is more fluent")
    ax.set_ylabel("Top@1 reward (MiniLM similarity to target)")
    ax.set_title(f"Reward vs fluency as η varies ({args.num_prompts} prompts x {len(args.seeds)} seed(s))")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=130)


if __name__ == "__main__":
    main()
