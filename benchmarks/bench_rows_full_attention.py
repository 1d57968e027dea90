"""Counts the model calls threshold decoding saves per row for a full-attention dLLM (LLaDA's architecture) at batch
1, 4 and 16, with rows that advance on their own against the lockstep loop they replace (issue 22, item 4).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_rows_full_attention.py --output runs/rows/bench.json
    PYTHONPATH=src python benchmarks/bench_rows_full_attention.py --smoke --output /tmp/rows.json   # seconds

A tiny native `LLaDAModelLM` (d_model 64, 2 layers, the test tokenizer's vocabulary) is trained here for
`--train-steps` Adam steps on `bench_block_diffusion`'s toy text (six of every eight words follow from the text before,
two are drawn from four: confidences high where the text is predictable, low elsewhere, as a trained model's are), as
masked diffusion is trained: a random fraction of the response masked, the loss on those. Sixteen prompts of 3-20
words, greedy, `L = --length` tokens in blocks of `--block`, LLaDA's rules (the sampled token's probability, the even
schedule), one token per step against Fast-dLLM's threshold at `--threshold`; each prompt alone (batch 1), in 4 calls
of 4 and in one call of 16, the threshold runs both with rows on their own (the pipeline's loop) and in lockstep (the
loop before, `pipe._lockstep = True`), whose rows all pay the call's count. The savings are
`1 - calls_per_row(threshold) / calls_per_row(fixed)`. The JSON ends with `summary`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch
from bench_block_diffusion import toy_batch, toy_prompts

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.models import LLaDAConfig, LLaDAModelLM
from entrgi_pipelines.testing import tiny_wordpiece_tokenizer

RUNS = [("fixed", "lockstep", b) for b in (1, 4, 16)] + [
    ("threshold", loop, b) for loop in ("rows", "lockstep") for b in (1, 4, 16)
]


def train_toy_llada(tokenizer, steps: int, seed: int, length: int = 64, batch: int = 32) -> LLaDAModelLM:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    vocab, mask = len(tokenizer), tokenizer.mask_token_id
    config = LLaDAConfig(
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        n_layers=2,
        mlp_hidden_size=128,
        rope=True,
        block_type="llama",
        activation_type="silu",
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        layer_norm_type="rms",
        vocab_size=vocab,
        embedding_size=vocab,
        weight_tying=False,
        max_sequence_length=256,
        mask_token_id=mask,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LLaDAModelLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        ids, prompt_lengths = toy_batch(tokenizer, rng, batch, length)
        response = torch.arange(length)[None] >= prompt_lengths[:, None]
        masked = response & (torch.rand(batch, length) < torch.rand(batch, 1).clamp(min=0.1))
        logits = model(torch.where(masked, mask, ids)).logits
        loss = torch.nn.functional.cross_entropy(logits[masked], ids[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, seconds")
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.length, args.block, args.train_steps = 16, 4, 20
    torch.set_num_threads(args.threads)
    tokenizer = tiny_wordpiece_tokenizer()
    began = time.time()
    model = train_toy_llada(tokenizer, args.train_steps, args.seed)
    scheduler = MaskedDiffusionScheduler(confidence="maskgit_plus", commit_schedule="even")
    pipe = EntRGiPipeline(model, tokenizer, scheduler)
    pipe.set_progress_bar_config(disable=True)
    prompts = toy_prompts(16, args.seed + 1)
    L = args.length
    result = {"settings": {**vars(args), "output": str(args.output)}, "platform": platform.platform(), "runs": {}}
    for mode, loop, batch in RUNS:
        pipe._lockstep = loop == "lockstep"
        per_row, calls, tokens = [], [], []
        for i in range(0, len(prompts), batch):
            out = pipe(
                prompts[i : i + batch],
                gen_length=L,
                num_inference_steps=L,  # one token per step
                block_length=args.block,
                num_samples_per_prompt=1,
                temperature=0,
                threshold=args.threshold if mode == "threshold" else None,
            )
            rows = out.row_nfe[:, 0].tolist() if out.row_nfe is not None else [int(out.nfe)] * out.sequences.shape[0]
            per_row += rows
            calls.append(int(out.nfe))
            tokens += out.sequences[:, 0].tolist()
        key = f"{mode}-{loop}-batch{batch}"
        result["runs"][key] = {"calls_per_row": per_row, "mean_calls_per_row": sum(per_row) / len(per_row)}
        result["runs"][key].update(calls=calls, tokens=tokens)
        print(f"{key:28s} mean calls per row {result['runs'][key]['mean_calls_per_row']:6.2f}", file=sys.stderr)
    pipe._lockstep = False
    runs, summary = result["runs"], {}
    for loop in ("rows", "lockstep"):
        savings = {
            b: 1
            - runs[f"threshold-{loop}-batch{b}"]["mean_calls_per_row"]
            / runs[f"fixed-lockstep-batch{b}"]["mean_calls_per_row"]
            for b in (1, 4, 16)
        }
        entry = {f"savings_batch{b}": round(v, 4) for b, v in savings.items()}
        entry["batch16_over_batch1"] = round(savings[16] / savings[1], 4) if savings[1] > 0 else None
        alone = runs[f"threshold-{loop}-batch1"]["tokens"]
        entry["same_tokens_as_alone"] = all(runs[f"threshold-{loop}-batch{b}"]["tokens"] == alone for b in (4, 16))
        summary[loop] = entry
    summary["rows_same_tokens_as_lockstep"] = all(
        runs[f"threshold-rows-batch{b}"]["tokens"] == runs[f"threshold-lockstep-batch{b}"]["tokens"] for b in (1, 4, 16)
    )
    ratio = summary["rows"]["batch16_over_batch1"]
    summary["target_80pct_met"] = ratio is not None and ratio >= 0.8
    summary["seconds"] = round(time.time() - began, 1)
    result["summary"] = summary
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    return result


if __name__ == "__main__":
    main()
