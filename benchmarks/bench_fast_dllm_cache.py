"""Fast-dLLM's approximate caches (`kv_cache="prefix"` / `"dual"`) against no cache, on full-attention dLLMs.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_fast_dllm_cache.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_fast_dllm_cache.py --families llada -L 64 128 --repeats 3

For each model family (native Dream and LLaDA at a small width, random weights, logits sharpened by `--sharpen` so
that confidences are far apart as a trained model's are, and so that threshold decoding commits several tokens per
step) and each setting (blocks of `--block`, fixed steps or threshold decoding; unguided greedy, and guided by EntRGi
with tau=0.7 in the block scope, which the dual cache requires), the pipeline runs with `kv_cache=None`, `"prefix"`
and `"dual"` on the same prompts and seed, alternately, `--repeats` times. Reported per cache: the median
milliseconds per generated token and its ratio to no cache (taken in the same run), the dLLM calls (`nfe`), the
fraction of response tokens equal to the no-cache run's, and the mean change of the reward (a tiny random BERT reward
model, on the final tokens) against the no-cache run, paired by sample. The embedded stack's dLLM v2 is a BERT
masked LM, which cannot take the cache (`FullAttentionKVCache` is read by the native Dream / LLaDA layers only), so
it is not measured here. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM
from entrgi_pipelines.testing import tiny_reward_model, tiny_wordpiece_tokenizer

CACHES = (None, "prefix", "dual")
PROMPTS = [
    "a man and a woman walked to the old city by the sea and the cat sat on the mat " * 3,
    "why did the dog run to the old man and the woman by the sea " * 3,
]


def build(family: str, tokenizer, width: int, layers: int, sharpen: float, std: float):
    torch.manual_seed(0)
    vocab, mask, pad = len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id
    heads = max(width // 64, 1)
    if family == "dream":
        config = DreamConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=3 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(heads // 2, 1),
            mask_token_id=mask,
            pad_token_id=pad,
            max_position_embeddings=4096,
            initializer_range=std,
        )
        model = DreamModel(config)
    else:
        config = LLaDAConfig(
            d_model=width,
            n_heads=heads,
            n_layers=layers,
            mlp_hidden_size=3 * width,
            block_type="llama",
            activation_type="silu",
            layer_norm_type="rms",
            rope=True,
            vocab_size=vocab,
            embedding_size=vocab,
            weight_tying=False,
            mask_token_id=mask,
            pad_token_id=pad,
            max_sequence_length=4096,
            init_std=std,
        )
        model = LLaDAModelLM(config)

    eos = tokenizer.sep_token_id if tokenizer.eos_token_id is None else tokenizer.eos_token_id

    def sharpened(module, args, output):
        logits = output.logits * sharpen
        logits[..., eos] = float("-inf")  # no response ends early: every block is decoded, as the setting says
        output.logits = logits
        return output

    model.register_forward_hook(sharpened)
    pipe = EntRGiPipeline(model.eval(), tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_setting(pipe, reward, gen_length: int, block: int, threshold, guided: bool, repeats: int, samples: int):
    run = dict(
        gen_length=gen_length,
        block_length=block,
        num_inference_steps=gen_length,
        threshold=threshold,
        num_samples_per_prompt=samples,
        reward_model=reward,
        guidance="entrgi" if guided else "none",
        guidance_scope="block",
        guidance_steps=2,
        temperature=0.7 if guided else 0.0,
    )
    times = {c: [] for c in CACHES}
    outs = {}
    for _ in range(repeats):
        for cache in CACHES:  # alternately: a busy machine shifts them together
            start = time.perf_counter()
            outs[cache] = pipe(PROMPTS, kv_cache=cache, generator=torch.Generator().manual_seed(0), **run)
            times[cache].append(time.perf_counter() - start)
    tokens = len(PROMPTS) * samples * gen_length
    base_ms = statistics.median(times[None]) * 1e3 / tokens
    rows = {}
    for cache in CACHES:
        ms = statistics.median(times[cache]) * 1e3 / tokens
        out, ref = outs[cache], outs[None]
        rows[str(cache)] = {
            "ms_per_token": round(ms, 3),
            "speedup": round(base_ms / ms, 2),
            "nfe": out.nfe,
            "token_agreement": round(float((out.sequences == ref.sequences).float().mean()), 3),
            "reward": round(float(out.rewards.mean()), 4),
            "reward_change": round(float((out.rewards - ref.rewards).mean()), 4),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["dream", "llada"], choices=["dream", "llada"])
    parser.add_argument("-L", "--gen-length", nargs="+", type=int, default=[64])
    parser.add_argument("--block", nargs="+", type=int, default=[8])
    parser.add_argument("--threshold", nargs="+", type=float, default=[0.0, 0.9], help="0: fixed steps")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sharpen", type=float, default=10.0)
    parser.add_argument("--std", type=float, default=0.1, help="weight init std (larger: a less uniform model)")
    parser.add_argument("--samples", type=int, default=2, help="K per prompt (2 prompts)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--unguided-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = tiny_wordpiece_tokenizer()
    reward = tiny_reward_model(len(tokenizer))
    prompt_tokens = max(len(ids) for ids in tokenizer(PROMPTS)["input_ids"])
    results = []
    for family in args.families:
        pipe = build(family, tokenizer, args.width, args.layers, args.sharpen, args.std)
        for gen_length in args.gen_length:
            for block in args.block:
                for threshold in args.threshold:
                    for guided in (False,) if args.unguided_only else (False, True):
                        rows = run_setting(
                            pipe,
                            reward,
                            gen_length,
                            block,
                            threshold or None,
                            guided,
                            args.repeats,
                            args.samples,
                        )
                        setting = dict(
                            family=family,
                            L=gen_length,
                            block=block,
                            threshold=threshold or None,
                            guided=guided,
                            prompt_tokens=prompt_tokens,
                        )
                        results.append({**setting, "caches": rows})
                        for cache, row in rows.items():
                            print(json.dumps({**setting, "kv_cache": cache, **row}), flush=True)
    print(
        json.dumps(
            {"width": args.width, "layers": args.layers, "sharpen": args.sharpen, "std": args.std, "results": results}
        )
    )


if __name__ == "__main__":
    main()
