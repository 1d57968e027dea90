"""The distribution of EntRGi's mixing weights `w = H(q) / log V` on the embedded stack.

    PYTHONPATH=src python studies/entropy_weights.py --num-prompts 8 --seed 0 -T 32 -L 32 --output weights.json

Runs EntRGi (K, T, L, M, eta, tau, top_p as `entrgi-bench`) with a `RewardGuidance(keep_trace=True)` callback and
reports the weights of every masked position at every guided denoising step: mean, quantiles, and the mean by
thirds of the denoising schedule. A weight of 1 feeds the reward model the sampled token (APS), 0 the expectation.
"""

import argparse
import json
from pathlib import Path

import torch

from entrgi_pipelines import RewardGuidance, bench, runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    runs.add_sampling_arguments(parser, steps=32, gen_length=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="JSON path for the figures")
    args = parser.parse_args()
    if args.guidance_steps < 1:
        parser.error("--guidance-steps must be >= 1: the weights are recorded during guidance.")
    if args.steps < 3:
        parser.error("-T/--steps must be >= 3: the weights are also reported by thirds of the schedule.")
    if args.threads:
        torch.set_num_threads(args.threads)

    bench_args = bench.build_parser().parse_args([])  # the embedded stack
    pipe, (reward_model, reward_tokenizer), _ = bench.load_components(bench_args)
    rows = bench.read_prompts(None, args.num_prompts)
    guidance = RewardGuidance(
        reward_model,
        reward_tokenizer,
        guidance="entrgi",
        guidance_steps=args.guidance_steps,
        guidance_lr=args.eta,
        keep_trace=True,
    )
    pipe(
        [row["prompt"] for row in rows],
        callback_on_step_end=guidance,
        reward_prompt=[row.get("target") or row["prompt"] for row in rows],
        generator=torch.Generator().manual_seed(args.seed),
        **runs.sampling_kwargs(args),
    )
    # The weights come from the step's unguided logits, so the M Adam steps of one denoising step share them.
    per_step = [entry["weight"].float() for entry in guidance.trace[:: args.guidance_steps]]
    weights = torch.cat(per_step)
    quantiles = torch.quantile(weights, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]))
    bounds = [round(len(per_step) * k / 3) for k in range(4)]
    thirds = [torch.cat(per_step[a:b]).mean().item() for a, b in zip(bounds[:-1], bounds[1:])]
    report = {
        "config": vars(args),
        "positions": weights.numel(),
        "mean": weights.mean().item(),
        "quantiles": dict(zip(["p10", "p25", "p50", "p75", "p90"], quantiles.tolist())),
        "mean_by_third_of_schedule": thirds,
        "share_above_0.9": (weights > 0.9).float().mean().item(),
        "share_below_0.1": (weights < 0.1).float().mean().item(),
    }
    print(json.dumps(report, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
