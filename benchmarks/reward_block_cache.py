"""The gain of the reward model's block cache (`BlockCache`): with `guidance_scope="block"`, a causal reward model
reads the conversation prefix and the committed blocks once per block, and each Adam step only the current block and
the suffix.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/reward_block_cache.py --threads 1

A random Qwen3 sequence classifier of a real width (`--hidden 1024`, `--layers 2`) scores `--rows` responses of
`-L` tokens after a `--prompt-tokens` prompt, with the current block in the middle of the response (half of it
committed: the mean over a call). One Adam step's reward evaluation is a forward and a backward to the response
embeddings. The script times, on the same inputs, interleaved (median of `--repeats`):

- `uncached`: today's default without the block cache (the prefix cache on: `prefix | response | suffix` minus the
  cached prefix, every Adam step);
- `cached`: the block cache (`block | suffix` after the cached prefix and committed part);
- `extend`: extending the last block's cache by the block just committed (a forward of one block, without
  gradient), once per block;
- `rebuild`: building it from the prefix cache (a forward of the whole committed part), when a committed token
  changed (SMC) or the rows changed.

It checks that the rewards and the block's gradients agree, and reports, for blocks of 4 and 32, the ratio per Adam
step and the ratio for a block's whole guidance (`S * M` Adam steps, `S` = the block's denoising steps, one token
per step by default: `S` = the block length), which pays the extension once. The last stdout line is one JSON object
with the ratios.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForSequenceClassification

from entrgi_pipelines.guidance import RewardTerm
from entrgi_pipelines.testing import WORDS, tiny_wordpiece_tokenizer


def reward_model(vocab_size: int, args) -> Qwen3ForSequenceClassification:
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 128,
        num_key_value_heads=max(1, args.hidden // 256),
        head_dim=128,
        max_position_embeddings=4096,
        num_labels=1,
        pad_token_id=0,
    )
    return Qwen3ForSequenceClassification(config).eval()


def evaluation(term: RewardTerm, embeds: torch.Tensor, visible: torch.BoolTensor, block=None):
    start = time.perf_counter()
    embeds = embeds.detach().requires_grad_(True)
    reward = term.reward(embeds, visible, block)
    (grad,) = torch.autograd.grad(reward.sum(), embeds)  # to the response only, as guidance does
    return time.perf_counter() - start, reward.detach(), grad


def measure(model, tokenizer, block_length: int, args) -> dict:
    words = [w for w in WORDS if w.isalpha()]
    prompts = [" ".join(words[(i + j) % len(words)] for j in range(args.prompt_tokens)) for i in range(args.rows)]
    cached = RewardTerm(model, tokenizer)
    uncached = RewardTerm(model, tokenizer, block_cache=False)
    for term in (cached, uncached):
        term.prepare(prompts, "cpu")
    L = args.gen_length
    tokens = torch.randint(5, len(tokenizer), (args.rows, L), generator=torch.Generator().manual_seed(0))
    start = L // 2 // block_length * block_length  # the mean committed length of a call
    bounds = torch.tensor([[start, start + block_length]] * args.rows)
    visible = torch.arange(L) < bounds[:, 1:]
    embeds = cached.dllm_embedding_matrix()[tokens]
    times = {"cached": [], "uncached": [], "extend": [], "rebuild": []}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        cached._block = None  # forget the last one: time a build from the prefix cache
        begin = time.perf_counter()
        cached.update_block_cache(tokens, visible, bounds)
        times["rebuild"].append(time.perf_counter() - begin)
        cached._block = None
        cached.update_block_cache(tokens, visible, bounds - block_length)  # the block before, then this one
        begin = time.perf_counter()
        block = cached.update_block_cache(tokens, visible, bounds)
        times["extend"].append(time.perf_counter() - begin)
        seconds, reward, grad = evaluation(cached, embeds, visible, block)
        times["cached"].append(seconds)
        seconds, expected, expected_grad = evaluation(uncached, embeds, visible)
        times["uncached"].append(seconds)
    t = {name: statistics.median(values[1:]) for name, values in times.items()}
    adam_steps = (args.steps_per_block or block_length) * args.guidance_steps
    window = slice(start, start + block_length)
    return {
        "block_length": block_length,
        "committed_tokens": start,
        "seconds": t,
        "adam_step_ratio_uncached_over_cached": t["uncached"] / t["cached"],
        "adam_steps_per_block": adam_steps,
        "block_ratio_uncached_over_cached": adam_steps * t["uncached"] / (t["extend"] + adam_steps * t["cached"]),
        "max_abs_reward_difference": float((reward - expected).abs().max()),
        "max_abs_block_gradient_difference": float((grad[:, window] - expected_grad[:, window]).abs().max()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rows", type=int, default=4, help="reward rows (B * K)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("-L", "--gen-length", type=int, default=256)
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 32], help="block lengths")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("-M", "--guidance-steps", type=int, default=3)
    parser.add_argument("--steps-per-block", type=int, default=None, help="denoising steps per block (its length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="JSON path for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = tiny_wordpiece_tokenizer()
    model = reward_model(len(tokenizer), args)
    figures = {
        "blocks": [measure(model, tokenizer, b, args) for b in args.blocks],
        "config": vars(args),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1))
    print(
        json.dumps(
            {
                f"block_{m['block_length']}": {
                    "adam_step_ratio": round(m["adam_step_ratio_uncached_over_cached"], 2),
                    "block_ratio": round(m["block_ratio_uncached_over_cached"], 2),
                }
                for m in figures["blocks"]
            }
        )
    )


if __name__ == "__main__":
    main()
