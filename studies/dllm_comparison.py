"""Embedded dLLM v1 vs v2: held-out masked perplexity and the fluency of unguided samples, same batches and seeds.

- Held-out masked-token perplexity (geo-mean of masking rates 0.15 / 0.5 / 0.85, fixed masks) on the same batches for
  every model: the v1 corpus's held-out documents and the distillation corpus's held-out prompts (never trained on).
- Unguided samples (K per prompt, T = L, one seed) of the distinct prompts of `--prompts` (default: the v2 instruction
  prompts, whose subjects are not in the distillation prompts): SmolLM2-135M-Instruct perplexity of each sample given
  its prompt (geometric mean), the bigram perplexity of held-out corpus text, distinct-2 and the share of punctuation
  tokens, with the first samples printed.

    python studies/dllm_comparison.py --documents corpus/documents.jsonl --distill corpus/distill.jsonl \\
        --dllm v1 v2 --output docs/dllm_v2_comparison.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import time
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.stack.corpus import read_jsonl
from entrgi_pipelines.stack.dllm import DLLM_VERSIONS, load_embedded_dllm
from entrgi_pipelines.stack.fluency import distinct_n, load_fluency_model
from entrgi_pipelines.stack.judges import load_smollm_judges
from entrgi_pipelines.stack.train_dllm import RESPONSE_LENGTHS, PairSampler, PromptResponseSampler, evaluate

PROMPTS_V2 = Path(__file__).parents[1] / "src/entrgi_pipelines/stack/data/prompts_v2.jsonl"


def geometric_mean(values: list[float]) -> float:
    """How perplexities are averaged; empty samples (nan) are left out."""
    logs = [math.log(v) for v in values if v == v and 0 < v < math.inf]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


def load_dllm(name: str):
    if name in DLLM_VERSIONS:
        return load_embedded_dllm(version=name)
    return AutoModelForMaskedLM.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--documents", required=True, help="corpus/documents.jsonl (entrgi_pipelines.stack.corpus)")
    parser.add_argument("--distill", required=True, help="corpus/distill.jsonl (entrgi_pipelines.stack.distill)")
    parser.add_argument("--dllm", nargs="+", default=["v1", "v2"], help="versions or from_pretrained folders")
    parser.add_argument("--prompts", default=str(PROMPTS_V2))
    parser.add_argument("-K", "--num-samples", type=int, default=4)
    parser.add_argument("-T", "--steps", type=int, default=32)
    parser.add_argument("-L", "--gen-length", type=int, default=32)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="JSON file for the figures and samples")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = load_dllm(args.dllm[0])[1]
    docs = read_jsonl(args.documents)
    pairs = read_jsonl(args.distill)
    rng = random.Random(4321)
    heldout_docs = PromptResponseSampler([d for d in docs if d["split"] == "heldout"], tokenizer, 0)
    heldout_pairs = PairSampler([p for p in pairs if p["split"] == "heldout"], tokenizer, 0)
    batches = {
        "corpus": [heldout_docs.batch(32, RESPONSE_LENGTHS[i % 4], rng) for i in range(args.eval_batches)],
        "distill": [heldout_pairs.batch(32, RESPONSE_LENGTHS[i % 4], rng) for i in range(args.eval_batches)],
    }
    prompts = list(dict.fromkeys(row["prompt"] for row in read_jsonl(args.prompts)))
    judges = load_smollm_judges()
    bigram = load_fluency_model(tokenizer)
    punctuation = {i for t, i in tokenizer.get_vocab().items() if t and all(c in string.punctuation for c in t)}

    results = {"config": vars(args), "models": {}}
    for name in args.dllm:
        model, tokenizer = load_dllm(name)
        heldout = {split: evaluate(model, b, tokenizer.mask_token_id)["ppl"] for split, b in batches.items()}
        pipe = EntRGiPipeline(model=model, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        out = pipe(
            prompts,
            num_inference_steps=args.steps,
            gen_length=args.gen_length,
            num_samples_per_prompt=args.num_samples,
            generator=torch.Generator().manual_seed(args.seed),
        )
        seconds = time.perf_counter() - start
        texts = [t for row in out.all_texts for t in row]
        sample_prompts = [p for p in prompts for _ in range(args.num_samples)]
        smollm_ppl = judges.perplexity(sample_prompts, texts)
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        flat = [i for row in ids for i in row]
        results["models"][name] = {
            "heldout_ppl": heldout,
            "smollm_ppl": geometric_mean(smollm_ppl),
            "bigram_ppl": geometric_mean([bigram.perplexity(row) for row in ids if row]),
            "distinct2": sum(distinct_n(row, 2) for row in ids if len(row) > 1) / max(1, sum(len(r) > 1 for r in ids)),
            "punctuation_share": sum(i in punctuation for i in flat) / max(1, len(flat)),
            "empty_samples": sum(not t for t in texts),
            "sampling_seconds": seconds,
            "samples": [
                {"prompt": p, "text": t, "smollm_ppl": s} for p, t, s in zip(sample_prompts, texts, smollm_ppl)
            ],
        }
        summary = {k: v for k, v in results["models"][name].items() if k != "samples"}
        print(json.dumps({"dllm": name, **summary}), flush=True)
        for sample in results["models"][name]["samples"][: 3 * args.num_samples : args.num_samples]:
            print(f"  {sample['prompt']!r} -> {sample['text']!r}")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
