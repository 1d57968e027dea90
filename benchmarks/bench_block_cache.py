"""Times one decoding step of a block-diffusion model with and without its exact key/value cache.

    PYTHONPATH=src python benchmarks/bench_block_cache.py                  # SDAR-1.7B width, 2 layers, CPU, 1 thread
    PYTHONPATH=src python benchmarks/bench_block_cache.py --layers 4 -L 128 256 --block 4 32 --repeats 5

A step at sequence length `L` (prompt and response so far) with blocks of `b` tokens costs, per row:

- **uncached**: one forward over all `L` tokens under the block-causal mask (what a pipeline without a cache runs);
- **cached read**: one forward over the current block's `b` tokens against a [`BlockKVCache`] holding the `L - b`
  committed tokens (`store_kv=False`: the cache is left as it was);
- **commit**: the same forward with `store_kv=True`, once per finished block.

The model is an [`SDARForCausalLM`] with random weights at SDAR-1.7B's width (hidden 2048, MLP 6144, 16 query and 8
key/value heads of 128, vocabulary 151936) and `--layers` layers, float32 on CPU (nothing is downloaded). The three
forwards are timed alternately, `--repeats` times, and their medians compared, so that a busy machine shifts them
together; the cached logits are checked against the uncached ones on the block. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from entrgi_pipelines.models import BlockKVCache, SDARConfig, SDARForCausalLM

# SDAR-1.7B's width (Qwen3-1.7B's shape, which SDAR keeps): the layers are the caller's.
SDAR_1_7B = dict(
    hidden_size=2048,
    intermediate_size=6144,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=1e6,
)


def build(layers: int, vocab: int, block_size: int = 4, seed: int = 0, **shape) -> SDARForCausalLM:
    """A random-weight [`SDARForCausalLM`] at SDAR-1.7B's width with `layers` layers (`shape` overrides the width)."""
    config = SDARConfig(vocab_size=vocab, num_hidden_layers=layers, block_size=block_size, **{**SDAR_1_7B, **shape})
    torch.manual_seed(seed)
    return SDARForCausalLM(config).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def step_times(model: SDARForCausalLM, length: int, block: int, batch: int, repeats: int) -> dict:
    model.config.block_size = block
    ids = torch.randint(0, model.config.vocab_size - 1, (batch, length))
    positions = torch.arange(length).expand(batch, length)
    committed = length - block
    cache = BlockKVCache(max_length=length)
    with torch.no_grad():
        model(ids[:, :committed], position_ids=positions[:, :committed], past_key_values=cache, store_kv=True)
        full = model(ids).logits[:, committed:]
        read = model(ids[:, committed:], position_ids=positions[:, committed:], past_key_values=cache).logits
    error = float((full - read).abs().max())

    def uncached():
        model(ids)

    def cached_read():
        model(ids[:, committed:], position_ids=positions[:, committed:], past_key_values=cache)

    def commit():
        # rewrites the same slots with the same values: the cache stays as it was for the next repeat
        model(ids[:, committed:], position_ids=positions[:, committed:], past_key_values=cache, store_kv=True)

    runs = {"uncached": [], "cached_read": [], "commit": []}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in (("uncached", uncached), ("cached_read", cached_read), ("commit", commit)):
                runs[name].append(timed(fn))
    medians = {name: statistics.median(times) for name, times in runs.items()}
    return {
        "L": length,
        "block": block,
        "batch": batch,
        "ms": {name: round(ms, 1) for name, ms in medians.items()},
        "uncached_over_cached_read": round(medians["uncached"] / medians["cached_read"], 1),
        "max_abs_logit_difference": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("-L", "--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--block", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build(args.layers, args.vocab)
    rows = []
    for length in args.lengths:
        for block in args.block:
            row = step_times(model, length, block, args.batch, args.repeats)
            rows.append(row)
            ms = row["ms"]
            print(
                f"L={length:4d} block={block:3d}: uncached {ms['uncached']:8.1f} ms | cached read "
                f"{ms['cached_read']:7.1f} ms | commit {ms['commit']:7.1f} ms | ratio "
                f"{row['uncached_over_cached_read']:5.1f}x | max |logit diff| {row['max_abs_logit_difference']:.1e}"
            )
    print(json.dumps({"layers": args.layers, "vocab": args.vocab, "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
