"""The gain of computing a decoder reward's conversation prefix once per call (`PrefixCache`), on SmolLM2-135M.

    PYTHONPATH=src python benchmarks/reward_prefix_cache.py --rows 16 --prompt-tokens 100 -L 16 --threads 1

One reward evaluation of guidance is a forward and a backward to the response embeddings over all rows. Without
the cache the model reads `prefix | response | suffix`; with it, `response | suffix` after the prefix's keys and
values, computed once in `RewardTerm.prepare`. The script times both on the same inputs (interleaved, median of
`--repeats`), checks that the rewards and gradients agree, and reports the per-evaluation ratio and the ratio for a
whole call of `T * M` evaluations (the cached call pays the prefix once). Two layouts:

- `prompt_in_template`: the LM-judge wording with the generation prompt before the response (`--prompt-tokens`
  tokens of corpus-like text), the case the cache is for;
- `lm_judge`: the stack's LM-judge template as guidance uses it (system prompt and question before the response).

The last stdout line is one JSON object with the ratios.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from entrgi_pipelines.guidance import CausalLMReward, RewardTemplate, RewardTerm
from entrgi_pipelines.stack.lm_reward import LM_JUDGE_TEMPLATE
from entrgi_pipelines.stack.smollm import load_smollm

PROMPT_IN_TEMPLATE = RewardTemplate(
    messages=[
        {"role": "user", "content": "{prompt}\n\nWhat is the following text about?\nText: {response}"},
        {"role": "assistant", "content": "This text is about {target}"},
    ],
    score="target",
)
PASSAGE = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness "
    "was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
)


def prompt_of(tokenizer, n_tokens: int, variant: int) -> str:
    """About `n_tokens` tokens of text (the passage repeated), made distinct per variant."""
    ids = tokenizer(f"Story {variant}. " + PASSAGE * (1 + n_tokens // 30), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:n_tokens])


def time_evaluation(term: RewardTerm, tokens: torch.LongTensor, visible: torch.BoolTensor):
    start = time.perf_counter()
    embeds = term.embeddings(tokens).detach().requires_grad_(True)
    reward = term.reward(embeds, visible)
    (grad,) = torch.autograd.grad(reward.sum(), embeds)  # to the response only, as guidance does
    return time.perf_counter() - start, reward.detach(), grad


def measure(model, tokenizer, template, args) -> dict:
    n_prompts = max(1, args.rows // args.samples_per_prompt)
    prompts = [prompt_of(tokenizer, args.prompt_tokens, i) for i in range(n_prompts)]
    prompts = [p for p in prompts for _ in range(args.samples_per_prompt)]
    targets = ["food and eating"] * len(prompts)
    tokens = torch.randint(1000, 20000, (len(prompts), args.gen_length), generator=torch.Generator().manual_seed(0))
    visible = torch.ones_like(tokens, dtype=torch.bool)
    terms = {
        name: RewardTerm(CausalLMReward(model, template), tokenizer, prefix_cache=name == "cached")
        for name in ("cached", "uncached")
    }
    prepare, times, outputs = {}, {"cached": [], "uncached": []}, {}
    for name, term in terms.items():
        start = time.perf_counter()
        term.prepare(targets, "cpu", prompts)
        prepare[name] = time.perf_counter() - start
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, term in terms.items():
            seconds, reward, grad = time_evaluation(term, tokens, visible)
            times[name].append(seconds)
            outputs[name] = (reward, grad)
    cached, uncached = (statistics.median(times[name][1:]) for name in ("cached", "uncached"))
    evaluations = args.steps * args.guidance_steps
    prefix_tokens = terms["uncached"]._context["prefix_keep"].sum(1).float().mean().item()
    return {
        "rows": len(prompts),
        "prefix_tokens_mean": prefix_tokens,
        "response_tokens": args.gen_length,
        "suffix_tokens_mean": terms["uncached"]._context["suffix_keep"].sum(1).float().mean().item(),
        "evaluation_s": {"cached": cached, "uncached": uncached},
        "prepare_s": prepare,
        "evaluation_ratio_uncached_over_cached": uncached / cached,
        "call_ratio_uncached_over_cached": (prepare["uncached"] + evaluations * uncached)
        / (prepare["cached"] + evaluations * cached),
        "max_abs_reward_difference": float((outputs["cached"][0] - outputs["uncached"][0]).abs().max()),
        "max_abs_gradient_difference": float((outputs["cached"][1] - outputs["uncached"][1]).abs().max()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=16, help="reward rows (B * K)")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="K: rows that share a prompt")
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("-L", "--gen-length", type=int, default=16)
    parser.add_argument("-T", "--steps", type=int, default=16, help="denoising steps of the call (for the call ratio)")
    parser.add_argument("-M", "--guidance-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="JSON path for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm()
    figures = {
        "prompt_in_template": measure(model, tokenizer, PROMPT_IN_TEMPLATE, args),
        "lm_judge": measure(model, tokenizer, LM_JUDGE_TEMPLATE, args),
        "config": vars(args),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1))
    print(
        json.dumps(
            {
                name: {
                    "evaluation_ratio": figures[name]["evaluation_ratio_uncached_over_cached"],
                    "call_ratio": figures[name]["call_ratio_uncached_over_cached"],
                }
                for name in ("prompt_in_template", "lm_judge")
            }
        )
    )


if __name__ == "__main__":
    main()
