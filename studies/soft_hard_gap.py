"""What the reward model is shown during guidance against the text it will judge: the soft-input gap of each method.

    PYTHONPATH=src python studies/soft_hard_gap.py --reward lm-judge --num-prompts 4 -T 16 -L 16 \
        --output gap_lm.json

At every Adam step of a guided call, the reward model scores the method's input (EntRGi's entropy-weighted mix of
the expected and a sampled token's embedding, APS's sampled token, the expectation's expected embedding) and, in the
same step and without a gradient, the sampled hard tokens alone: a text the current logits could produce. Reported
per method, over all (row, Adam step) pairs:

- `gap`: mean of guided-input reward minus hard-token reward (0 for APS by construction, a check of the probe);
  positive: the input guidance optimises looks better to the reward model than a text drawn from the same logits;
- `correlation`: Pearson correlation of the two across rows and steps (do they rank inputs alike?);
- `transfer`: over each denoising step's M Adam steps, the rise of the hard-token reward divided by the rise of the
  guided-input reward (1: what the optimiser gains, the text gains too; 0: the gain stays in the soft input);
- `top1`: the mean best-of-K reward of the decoded texts (as `entrgi-bench` reports it).

The paper's argument is that a reward model never trained on soft inputs misjudges the expected embedding: with the
LM-judge reward (a decoder behind a vocabulary bridge) the expectation's gap should be larger, and its transfer
smaller, than with the MiniLM similarity reward.

`--render gap_a.json gap_b.json ...` prints the markdown table of earlier outputs (docs/results.md).
"""

import argparse
import json
import math
from pathlib import Path

import torch

from entrgi_pipelines import RewardGuidance, bench, runs


class SoftHardProbe(RewardGuidance):
    """`RewardGuidance` that also scores, at every Adam step, the sampled hard tokens of that step (no gradient)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def guided_reward(self, tokens, masked, probs, hard, weight, index=None, end=None):
        total = super().guided_reward(tokens, masked, probs, hard, weight, index, end)
        with torch.no_grad():
            # w = 1 feeds the sampled tokens' embeddings; no `index`: the workspace of the graph above stays untouched.
            # The same `end`: with blocks, both read the response up to the current block's end.
            hard_total = super().guided_reward(tokens, masked, probs, hard, torch.ones_like(weight), end=end)
        self.pairs.append((total.detach().float().clone(), hard_total.float().clone()))
        return total


def method_figures(pairs: list[tuple[torch.Tensor, torch.Tensor]], guidance_steps: int) -> dict:
    guided = torch.stack([g for g, _ in pairs])  # (steps, rows)
    hard = torch.stack([h for _, h in pairs])
    gap = guided - hard
    flat_g, flat_h = guided.flatten(), hard.flatten()
    correlation = torch.corrcoef(torch.stack([flat_g, flat_h]))[0, 1].item()
    # Rise over the M Adam steps of each denoising step (the first and last call of each group of M).
    groups = guided.shape[0] // guidance_steps
    first, last = slice(0, groups * guidance_steps, guidance_steps), slice(guidance_steps - 1, None, guidance_steps)
    rise_guided = (guided[last][:groups] - guided[first]).mean().item()
    rise_hard = (hard[last][:groups] - hard[first]).mean().item()
    sd = gap.flatten().std().item()
    return {
        "gap": gap.mean().item(),
        "gap_ci": 1.96 * sd / math.sqrt(gap.numel()),
        "guided_reward": guided.mean().item(),
        "hard_reward": hard.mean().item(),
        "hard_reward_sd": flat_h.std().item(),
        "correlation": correlation,
        "rise_guided": rise_guided,
        "rise_hard": rise_hard,
        "transfer": rise_hard / rise_guided if rise_guided != 0 else math.nan,
        "pairs": gap.numel(),
    }


def render(files: list[str]) -> str:
    """One markdown row per (reward, method) of `main`'s outputs."""
    lines = [
        "| reward | method | pairs | guided-input reward | hard-token reward (sd) | gap | correlation | rise per "
        "denoising step: guided input | rise: hard tokens | transfer | Top@1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        report = json.loads(Path(f).read_text())
        reward = report["config"]["reward"]
        for method, m in report["methods"].items():
            lines.append(
                f"| {reward} | {method} | {m['pairs']} | {m['guided_reward']:.4f} | {m['hard_reward']:.4f} "
                f"({m['hard_reward_sd']:.4f}) | {m['gap']:+.4f} ± {m['gap_ci']:.4f} | {m['correlation']:.3f} | "
                f"{m['rise_guided']:+.4f} | {m['rise_hard']:+.4f} | {m['transfer']:.2f} | {m['top1']:.4f} |"
            )
    configs = [json.loads(Path(f).read_text())["config"] for f in files]
    settings = ", ".join(
        f"{c['reward']}: {c['num_prompts']} prompts x seeds {c['seeds']}, K={c['num_samples']}, T={c['steps']}, "
        f"L={c['gen_length']}, M={c['guidance_steps']}, eta={c['eta']}"
        for c in configs
    )
    return "\n".join(lines) + f"\n\n{settings}; pairs = (row, Adam step) pairs, gap interval 95% (normal)."


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--render", nargs="+", metavar="GAP_JSON", help="print the table of earlier outputs, run nothing"
    )
    runs.add_reward_argument(parser)
    parser.add_argument("--methods", nargs="+", default=["expectation", "aps", "entrgi"])
    parser.add_argument("--num-prompts", type=int, default=4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--dllm", default="v2")
    runs.add_sampling_arguments(parser, steps=16, gen_length=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="JSON path for the figures")
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return
    unknown = sorted(set(args.methods) - {"expectation", "aps", "entrgi"})
    if unknown or args.guidance_steps < 2:
        parser.error("--methods: expectation, aps, entrgi (guided ones); -M must be >= 2 to measure a rise")
    if args.threads:
        torch.set_num_threads(args.threads)
    components = bench.build_parser().parse_args(["--reward", args.reward, "--dllm", args.dllm])
    pipe, (reward_model, reward_tokenizer), _ = bench.load_components(components)
    rows = bench.read_prompts(None, args.num_prompts, args.dllm)
    report = {"config": vars(args), "methods": {}}
    for method in args.methods:
        probe = SoftHardProbe(
            reward_model, reward_tokenizer, guidance=method, guidance_steps=args.guidance_steps, guidance_lr=args.eta
        )
        top1 = []
        for seed in args.seeds:
            out = pipe(
                [row["prompt"] for row in rows],
                callback_on_step_end=probe,
                reward_prompt=[row.get("target") or row["prompt"] for row in rows],
                generator=torch.Generator().manual_seed(seed),
                **runs.sampling_kwargs(args),
            )
            top1 += out.rewards.max(-1).values.tolist()
        figures = method_figures(probe.pairs, args.guidance_steps)
        figures["top1"] = sum(top1) / len(top1)
        report["methods"][method] = figures
        print(json.dumps({"method": method, **figures}), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
