"""Embedded dLLM v3 against v2, unguided: threshold decoding's calls, seconds per answer and the answers' fluency.

For each `--dllm` version, the first `--num-prompts` bundled prompts (`--prompts held-out`: the distillation corpus's
held-out prompts, never trained on), K samples each, sampled at tau 0.7 / top-p 0.95 (seed 0), `L` tokens at one token
per step (T = L): fixed steps, then threshold decoding at each `--thresholds`. v3 decodes in its blocks of 4 against
its exact key/value cache (`kv_cache="auto"`), v2 in blocks of `--v2-block` (threshold decoding needs blocks; every
row on its own). Per setting: the model calls per sample (`out.row_nfe`: prefill and commits included for v3), the
seconds per answer (the call's wall time / its answers, one thread), SmolLM2-135M-Instruct's perplexity of each answer
given its prompt (geometric mean), the bigram perplexity of held-out corpus text, distinct-2, and the first answers.
The JSON is written after every setting and a rerun skips the settings it holds.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python studies/v3_vs_v2.py --dllm v2 v3 --output runs/v3/v3_vs_v2.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.bench import read_prompts
from entrgi_pipelines.stack.dllm import load_embedded_dllm
from entrgi_pipelines.stack.fluency import distinct_n, load_fluency_model
from entrgi_pipelines.stack.judges import load_smollm_judges
from entrgi_pipelines.stack.train_block_dllm import _read_jsonl


def geometric_mean(values: list[float]) -> float:
    logs = [math.log(v) for v in values if v == v and 0 < v < math.inf]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def held_out_prompts(distill: Path, n: int) -> list[str]:
    seen, out = set(), []
    for record in _read_jsonl(distill):
        if record["split"] == "heldout" and record["prompt"] not in seen:
            seen.add(record["prompt"])
            out.append(record["prompt"])
    return out[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--dllm", nargs="+", default=["v2", "v3"])
    parser.add_argument("--prompts", default="bundled", help="'bundled' or 'held-out' (needs --distill)")
    parser.add_argument("--distill", default="corpus/distill.jsonl")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("-K", "--num-samples", type=int, default=2)
    parser.add_argument("-L", "--gen-length", type=int, default=32)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.7])
    parser.add_argument("--v2-block", type=int, default=8)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.prompts == "held-out":
        prompts = held_out_prompts(Path(args.distill), args.num_prompts)
    else:
        prompts = [r["prompt"] for r in read_prompts(None, args.num_prompts)]
    result = json.loads(args.output.read_text()) if args.output.exists() else {}
    result["settings"] = {**vars(args), "output": str(args.output), "prompts_used": prompts}
    judges = load_smollm_judges()
    for version in args.dllm:
        model, tokenizer = load_embedded_dllm(version=version)
        pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler(confidence="maskgit_plus"))
        pipe.set_progress_bar_config(disable=True)
        bigram = load_fluency_model(tokenizer)
        block = None if pipe.block_causal else args.v2_block
        for threshold in [None, *args.thresholds]:
            key = f"{version}-{'fixed' if threshold is None else f'threshold{threshold}'}"
            if key in result:
                continue
            began = time.time()
            out = pipe(
                prompts,
                gen_length=args.gen_length,
                num_inference_steps=args.gen_length,
                block_length=block,
                num_samples_per_prompt=args.num_samples,
                temperature=0.7,
                top_p=0.95,
                threshold=threshold,
                generator=torch.Generator().manual_seed(0),
            )
            seconds = time.time() - began
            answers = [text for texts in out.all_texts for text in texts]
            asked = [p for p in prompts for _ in range(args.num_samples)]
            ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
            row_nfe = out.row_nfe.flatten().tolist() if out.row_nfe is not None else [out.nfe] * len(answers)
            result[key] = {
                "version": version,
                "threshold": threshold,
                "block_length": block or int(model.config.block_size),
                "mean_calls_per_answer": sum(row_nfe) / len(row_nfe),
                "calls_of_the_call": int(out.nfe),
                "seconds_per_answer": round(seconds / len(answers), 3),
                "smollm2_perplexity": round(geometric_mean(judges.perplexity(asked, answers)), 2),
                "bigram_perplexity": round(geometric_mean([bigram.perplexity(t) for t in ids if t]), 1),
                "distinct_2": round(sum(distinct_n(t, 2) for t in ids) / len(ids), 3),
                "answers": answers[:6],
            }
            print(json.dumps({key: {k: v for k, v in result[key].items() if k != "answers"}}), flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
