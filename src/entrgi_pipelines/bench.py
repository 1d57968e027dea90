"""`entrgi-bench`: EntRGi against APS, the expectation and Best-of-N on a JSONL file of prompts.

Every method samples the same prompts with the same seeds. For every (method, seed, prompt) it records the K samples
and their guidance rewards (on discrete tokens), and for the best sample: the scores of two topic judges (the MiniLM
topic classifier, `judge_minilm`, and the SmolLM2 LM judge, `judge_lm`; see `stack/judges.py`), of which `judge` is
the one held out from the guidance reward (the MiniLM classifier for the LM-judge reward, the LM judge otherwise;
`held_out_judge` names it), its perplexity under a bigram model of held-out corpus text (`perplexity`) and under
SmolLM2-135M-Instruct given the prompt (`perplexity_smollm`), and its distinct-2. The table reports Top@1 (best of
K) and Avg@N (mean of K) reward with 95% intervals over prompts x seeds. The last line on stdout is one JSON object
of mean Top@1 per method.

Example (the embedded offline stack, a couple of minutes on 2 cores)::

    entrgi-bench --methods none entrgi --num-prompts 12 --seeds 0 1 --output bench.json

With `--resample smc` (and `--resample-every`, `--resample-ess`, `--resample-temperature`, `--potential`) every method
runs with SMC resampling over each prompt's K samples; each record then holds the steps where the samples were
weighed, the prompt's ESS and resampling decision at each, and the final samples' ancestry (`smc`). Every record
holds the diversity of the prompt's K samples: distinct-2 over all of them (`distinct2_samples`) and the number of
distinct texts (`distinct_samples`).

Across processes, ``accelerate launch --num_processes N -m entrgi_pipelines.bench ...`` (``--cpu`` for CPU processes)
splits the batches of every (method, seed) between the processes and gathers every record, in prompt order, into the
main process's output. Each batch draws from its own generator (:func:`batch_generator`), so the records do not depend
on N.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from importlib import resources
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .checkpoint import BenchCheckpoint, write_json_atomic, write_text_atomic
from .guidance.entrgi import GUIDANCE_METHODS
from .runs import (
    add_resampling_arguments,
    add_reward_argument,
    add_sampling_arguments,
    check_decoding,
    check_resampling,
    dllm_choice,
    guided_samples,
    judge_scores,
    load_reward,
    resampling_kwargs,
)
from .validation import StrictArgumentParser, existing_file, exit_on_bad_input, model_folder, positive_int, read_jsonl

# The bundled prompts per embedded dLLM version: v1 continues King-James-style text, v2 answers requests.
DEFAULT_PROMPTS = {"v1": "data/prompts.jsonl", "v2": "data/prompts_v2.jsonl"}


def read_prompts(path: str | None, num_prompts: int | None, dllm: str | None = None) -> list[dict]:
    """The prompts of `path`, or the bundled ones for the embedded dLLM version `dllm` (default: the newest)."""
    from .stack.dllm import default_dllm_version

    bundled = DEFAULT_PROMPTS.get(dllm or "", DEFAULT_PROMPTS[default_dllm_version()])
    text = Path(path).read_text() if path else resources.files("entrgi_pipelines.stack").joinpath(bundled).read_text()
    rows = read_jsonl(path or bundled, text)
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"--prompts line {i + 1} has no non-empty 'prompt' string: {row}")
    if num_prompts is not None:
        if num_prompts > len(rows):
            raise ValueError(f"--num-prompts {num_prompts} exceeds the {len(rows)} prompts of the file.")
        rows = rows[:num_prompts]
    return rows


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * std / math.sqrt(n)


def summarise(records: list[dict], methods: list[str]) -> dict:
    summary = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        top1, avg = mean_ci([r["top1"] for r in rows]), mean_ci([r["avg"] for r in rows])
        judge = mean_ci([r["judge"] for r in rows])
        # Records written before the SmolLM2 judges carry only the MiniLM judge, which was then the held-out one.
        judge_minilm = mean_ci([r.get("judge_minilm", r["judge"]) for r in rows])
        judge_lm = mean_ci([r.get("judge_lm", math.nan) for r in rows])
        held_out = {r.get("held_out_judge", "minilm") for r in rows}
        if len(held_out) > 1:
            raise ValueError(
                f"Records of {method!r} have different held-out judges {sorted(held_out)}: summarise "
                "runs of one guidance reward at a time."
            )
        log_ppl = mean_ci([math.log(r["perplexity"]) for r in rows if r["perplexity"] == r["perplexity"]])
        log_ppl_lm = mean_ci([math.log(p) for r in rows if (p := r.get("perplexity_smollm", math.nan)) == p])
        summary[method] = {
            "top1": top1[0],
            "top1_ci": top1[1],
            "avg": avg[0],
            "avg_ci": avg[1],
            "judge": judge[0],
            "judge_ci": judge[1],
            "held_out_judge": held_out.pop() if held_out else "minilm",
            "judge_minilm": judge_minilm[0],
            "judge_minilm_ci": judge_minilm[1],
            "judge_lm": judge_lm[0],
            "judge_lm_ci": judge_lm[1],
            "perplexity": math.exp(log_ppl[0]),
            "perplexity_smollm": math.exp(log_ppl_lm[0]),
            "distinct2": mean_ci([r["distinct2"] for r in rows])[0],
            "seconds_per_prompt": sum(r["seconds"] for r in rows) / max(len(rows), 1),
            "nfe": mean_ci([r.get("nfe", math.nan) for r in rows])[0],
            # diversity among a prompt's K samples (records written before these fields: nan)
            "distinct2_samples": mean_ci([r.get("distinct2_samples", math.nan) for r in rows])[0],
            "distinct_samples": mean_ci([r.get("distinct_samples", math.nan) for r in rows])[0],
            "n": len(rows),
        }
    return summary


JUDGE_NAMES = {"minilm": "MiniLM judge", "lm": "LM judge"}


def markdown_table(summary: dict) -> str:
    """The summary as a markdown table: the held-out judge first, then the other; both perplexities of the best sample.

    Summaries written before the SmolLM2 judges (no `judge_lm`, `perplexity_smollm`) show "—" in those columns.
    """
    held_out = next((s.get("held_out_judge", "minilm") for s in summary.values()), "minilm")
    other = "lm" if held_out == "minilm" else "minilm"
    lines = [
        f"| method | n | Top@1 reward | Avg@N reward | held-out {JUDGE_NAMES[held_out]} (best) | "
        f"{JUDGE_NAMES[other]} (best) | bigram perplexity (best) | SmolLM2 perplexity (best) | distinct-2 (best) "
        "| s / prompt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value, spec: str) -> str:
        return "—" if value is None or value != value else format(value, spec)

    for method, s in summary.items():
        other_judge = s.get(f"judge_{other}")
        lines.append(
            f"| {method} | {s['n']} | {s['top1']:.4f} ± {s['top1_ci']:.4f} | {s['avg']:.4f} ± {s['avg_ci']:.4f} | "
            f"{s['judge']:.3f} ± {s['judge_ci']:.3f} | {fmt(other_judge, '.3f')} | {s['perplexity']:.1f} | "
            f"{fmt(s.get('perplexity_smollm'), '.1f')} | {s['distinct2']:.3f} | {s['seconds_per_prompt']:.2f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = StrictArgumentParser(prog="entrgi-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prompts", type=existing_file, help="JSONL with {'prompt': ..., 'target': ...} per line (default: bundled)"
    )
    parser.add_argument("--num-prompts", type=positive_int, default=12, help="use the first N prompts (default 12)")
    parser.add_argument("--methods", nargs="+", default=["none", "entrgi"], choices=GUIDANCE_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    # Defaults sized for 12 prompts x 2 seeds x 2 methods in about 3 minutes on 2 CPU cores; docs/results.md uses
    # T = L = 32.
    add_sampling_arguments(parser, steps=16, gen_length=16)
    add_resampling_arguments(parser)
    parser.add_argument(
        "--dllm",
        type=dllm_choice,
        help="embedded dLLM version (v1, v2) or a diffusion LM folder (default: the newest embedded version)",
    )
    add_reward_argument(parser)
    parser.add_argument(
        "--reward-model", type=model_folder, help="reward model folder to guide with (default: embedded similarity)"
    )
    parser.add_argument(
        "--judge", type=model_folder, help="topic classifier judge folder (default: the embedded MiniLM topic judge)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="prompts per pipeline call")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in --output and run only the rest (same settings, or more prompts, seeds or "
        "methods: see checkpoint.py)",
    )
    parser.add_argument("--output", help="write every sample and the summary to this JSON file")
    parser.add_argument("--markdown", help="also write the table to this file")
    return parser


def load_components(args):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    from .pipelines.entrgi import EntRGiPipeline
    from .schedulers import MaskedDiffusionScheduler
    from .stack import reward_models as stack_rewards  # registers the MiniLM pair models with the Auto classes
    from .stack.dllm import DLLM_VERSIONS, load_embedded_dllm

    def hf(path, cls):
        # safetensors only, and never code from the folder (trust_remote_code=False: no interactive prompt either)
        model = cls.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        return model.eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=False)

    if args.dllm is None or args.dllm in DLLM_VERSIONS:
        model, tokenizer = load_embedded_dllm(version=args.dllm)
    else:
        model, tokenizer = hf(args.dllm, AutoModelForMaskedLM)
    reward = (
        hf(args.reward_model, AutoModelForSequenceClassification)
        if args.reward_model
        else load_reward(getattr(args, "reward", "similarity"))
    )
    judge = hf(args.judge, AutoModelForSequenceClassification) if args.judge else stack_rewards.load_topic_judge()
    pipe = EntRGiPipeline(model=model, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, reward, judge


def run(args) -> dict:
    from .stack.fluency import distinct_n, load_fluency_model
    from .stack.judges import default_topic_descriptions, load_smollm_judges

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = read_prompts(args.prompts, args.num_prompts, args.dllm)
    pipe, (reward_model, reward_tokenizer), (judge, judge_tokenizer) = load_components(args)
    fluency = load_fluency_model(judge_tokenizer)
    # The LM topic judge chooses among the 10 benchmark topics and every target of the prompt file (all its lines,
    # so that the candidates do not depend on --num-prompts).
    all_targets = [row.get("target") or row["prompt"] for row in read_prompts(args.prompts, None, args.dllm)]
    lm_judges = load_smollm_judges(candidates=default_topic_descriptions() + all_targets)
    reward_name = getattr(args, "reward", "similarity")  # the held-out topic judge is the other one
    starts = list(range(0, len(prompts), args.batch_size))  # each batch: prompts[start : start + batch_size]
    records, order = [], []  # `order`: (method, seed, prompt) positions, to merge the processes' records
    state = PartialState()  # one process, or those of `accelerate launch`: each runs its share of the batches
    progress = tqdm(
        total=len(args.methods) * len(args.seeds) * len(prompts),
        desc="entrgi-bench",
        unit="prompt",
        disable=not state.is_main_process,
    )
    config = bench_config(args)
    # Saved after every batch; with --resume, batches already in the output file are skipped.
    checkpoint = BenchCheckpoint(args.output, config, getattr(args, "resume", False))
    if not state.is_main_process:
        checkpoint.path = None  # every process reads the saved records; only the main one writes its own
    for method_index, method in enumerate(args.methods):
        for seed_index, seed in enumerate(args.seeds):
            with state.split_between_processes(starts) as my_starts:
                batches = [(start, prompts[start : start + args.batch_size]) for start in my_starts]
            for batch_start, batch in batches:
                positions = [(method_index, seed_index, batch_start + i) for i in range(len(batch))]
                targets = [row.get("target") or row["prompt"] for row in batch]
                saved = checkpoint.finished((method, seed, row["prompt"], t) for row, t in zip(batch, targets))
                if saved is not None:
                    records.extend(saved)
                    order.extend(positions)
                    progress.update(len(batch))
                    continue
                generator = batch_generator(seed, batch_start)
                start = time.perf_counter()
                out = guided_samples(
                    pipe,
                    reward_model,
                    reward_tokenizer,
                    [row["prompt"] for row in batch],
                    targets,
                    method,
                    args,
                    generator,
                    **resampling_kwargs(args),
                )
                seconds = (time.perf_counter() - start) / len(batch)
                start = time.perf_counter()
                judged = lm_judges.record_fields(
                    [row["prompt"] for row in batch],
                    targets,
                    out.texts,
                    judge_scores(judge, judge_tokenizer, targets, out.texts),
                    reward_name,
                )
                judge_seconds = (time.perf_counter() - start) / len(batch)
                for b, (row, target, best, texts, rewards, judge_fields) in enumerate(
                    zip(batch, targets, out.texts, out.all_texts, out.rewards, judged)
                ):
                    best_ids = judge_tokenizer(best, add_special_tokens=False)["input_ids"]
                    sample_ids = judge_tokenizer(texts, add_special_tokens=False)["input_ids"]
                    records.append(
                        {
                            "method": method,
                            "seed": seed,
                            "prompt": row["prompt"],
                            "target": target,
                            "texts": texts,
                            "rewards": rewards.tolist(),
                            "best": best,
                            "top1": float(rewards.max()),
                            "avg": float(rewards.mean()),
                            **judge_fields,
                            "perplexity": fluency.perplexity(best_ids),
                            "distinct2": distinct_n(best_ids, 2),
                            "seconds": seconds,
                            "nfe": out.nfe,  # the batch's dLLM calls (shared by its prompts)
                            "judge_seconds": judge_seconds,
                            "distinct2_samples": pooled_distinct_n(sample_ids, 2),
                            "distinct_samples": len(set(texts)),
                            **smc_fields(out, b),
                        }
                    )
                order.extend(positions)
                progress.update(len(batch))
                done = [m for m in args.methods if any(r["method"] == m for r in records)]
                checkpoint.save({"config": config, "summary": summarise(records, done), "records": records})
    progress.close()
    if state.num_processes > 1:
        gathered = gather_object(list(zip(order, records)))
        records = [record for _, record in sorted(gathered, key=lambda pair: tuple(pair[0]))]
    summary = summarise(records, args.methods)
    return {"config": config, "summary": summary, "records": records}


def pooled_distinct_n(samples: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of several token sequences (a prompt's K samples), none spanning two
    samples: 1.0 when no n-gram repeats within or across them, 1/K for K copies of one sample without repetition."""
    grams = [gram for ids in samples for gram in zip(*(ids[i:] for i in range(n)))]
    return len(set(grams)) / len(grams) if grams else math.nan


def smc_fields(out, prompt_index: int) -> dict:
    """The SMC record of one prompt of a pipeline output (empty without resampling): the steps where the samples
    were weighed, the prompt's ESS and whether it resampled at each, and each final sample's ancestor."""
    if out.ancestry is None:
        return {}
    return {
        "smc": {
            "steps": out.resample_steps,
            "ess": out.ess[:, prompt_index].tolist(),
            "resampled": [row[prompt_index] for row in out.resampled],
            "ancestry": out.ancestry[prompt_index].tolist(),
        }
    }


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The random generator of the batch that starts at prompt `start`: seeded with `seed` for the first batch (a
    run in one batch draws as it always did) and with a seed derived from `(seed, start)` for the others.

    Every batch draws from its own generator, so its records depend on the seed and on the batch alone: the same
    whether the batches run in one process, in several (`accelerate launch`), or in a resumed run.
    """
    if start == 0:
        return torch.Generator().manual_seed(seed)
    digest = hashlib.sha256(f"{seed}:{start}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def bench_config(args) -> dict:
    """The settings recorded in the output (where the results go, and whether they were resumed, are not)."""
    return {k: v for k, v in vars(args).items() if k not in ("output", "markdown", "resume")}


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Refuses bad settings and files before any model work: exit status 2 and one line on stderr."""
    for name in ("methods", "seeds"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            parser.error(f"--{name} lists {values}: give each once")
    exit_on_bad_input(parser, read_prompts, args.prompts, args.num_prompts)
    exit_on_bad_input(parser, check_decoding, args)
    exit_on_bad_input(parser, check_resampling, args, args.methods)
    if args.reward_model and args.reward != "similarity":
        parser.error(f"--reward-model replaces the embedded reward: drop it or --reward {args.reward}")
    for flag, path in (("--output", args.output), ("--markdown", args.markdown)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            parser.error(f"{flag} {path!r}: its folder does not exist")
    exit_on_bad_input(parser, BenchCheckpoint, args.output, bench_config(args), args.resume)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (returns nothing: a console script's return value becomes its exit status)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    result = run(args)
    if not PartialState().is_main_process:  # the main process writes the gathered records
        return
    table = markdown_table(result["summary"])
    print(table)
    if args.output:
        write_json_atomic(args.output, result)  # the complete run, without the resume progress
    if args.markdown:
        write_text_atomic(args.markdown, table + "\n")
    print(json.dumps({"top1": {m: s["top1"] for m, s in result["summary"].items()}}))


if __name__ == "__main__":
    main()
