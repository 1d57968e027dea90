"""MiniLM initialisation vs training from scratch, for the same budget: held-out perplexity and prompted samples.

    PYTHONPATH=src python studies/init_comparison.py --documents data/corpus/documents.jsonl \
        --output runs/init --steps 200 --reference docs/results.json

Both runs see the same batches (same seed) under the same step-based schedule (warmup, cosine to zero at `--steps`),
each in its own one-thread process, side by side. Each trained model then writes K unguided samples for the first
`--num-prompts` bundled prompts (`entrgi-bench --methods none --dllm ...`), and the report gives the held-out
masked-token perplexity at each evaluation and the fluency of every sample: perplexity under the held-out bigram
model (geometric mean over samples) and distinct-2. `--reference` adds the same prompts and seed from an earlier
`entrgi-bench` output (e.g. the shipped dLLM's unguided rows in docs/results.json).
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

INITS = ("minilm", "scratch")


def launch_all(commands: dict[str, list[str]], logs: Path) -> None:
    """Runs the commands side by side and fails loudly if any of them fails."""
    files = {name: open(logs / f"{name}.log", "w") for name in commands}
    running = {
        name: subprocess.Popen(cmd, stdout=files[name], stderr=subprocess.STDOUT) for name, cmd in commands.items()
    }
    failed = [name for name, proc in running.items() if proc.wait() != 0]
    for f in files.values():
        f.close()
    if failed:
        raise SystemExit(f"{failed} failed; see {[str(logs / f'{n}.log') for n in failed]}")


def sample_fluency(records: list[dict], tokenizer, fluency) -> dict:
    from entrgi_pipelines.stack.fluency import distinct_n

    texts = [t for r in records for t in r["texts"]]
    ids = [x for x in (tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts) if x]
    # An empty response (all end-of-text) has no perplexity; it is counted, not averaged in.
    log_ppl = [math.log(fluency.perplexity(x)) for x in ids]
    distinct = [distinct_n(x, 2) for x in ids if len(x) > 1]
    # A bigram model rates strings of frequent tokens ("the , and ,") as likely, so report how much of the text is
    # punctuation alongside its perplexity.
    pieces = [tokenizer.convert_ids_to_tokens(x) for x in ids]
    punctuation = sum(not any(c.isalnum() for c in p) for x in pieces for p in x) / max(sum(map(len, pieces)), 1)
    return {
        "samples": len(texts),
        "empty": len(texts) - len(ids),
        "perplexity": math.exp(sum(log_ppl) / len(log_ppl)) if log_ppl else float("nan"),
        "distinct2": sum(distinct) / len(distinct) if distinct else float("nan"),
        "punctuation": punctuation,
        "examples": [f"{r['prompt']} … {r['texts'][0]}" for r in records[:3]],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--documents", required=True, help="JSONL written by entrgi_pipelines.stack.corpus")
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the prompted samples")
    parser.add_argument("-T", "--steps-per-sample", type=int, default=32)
    parser.add_argument("-L", "--gen-length", type=int, default=32)
    parser.add_argument("--reference", help="an entrgi-bench output whose `none` rows are reported alongside")
    parser.add_argument("--report-only", action="store_true", help="re-read the runs in --output, train nothing")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    if not args.report_only:
        train = [sys.executable, "-m", "entrgi_pipelines.stack.train_dllm", "--documents", args.documents]
        train += ["--max-steps", str(args.steps), "--max-minutes", "100000", "--warmup", str(args.warmup)]
        train += ["--eval-every", str(args.eval_every), "--threads", "1"]
        launch_all({f"train_{i}": train + ["--init", i, "--output", str(out / i)] for i in INITS}, out)

        from entrgi_pipelines.stack.dllm import build_embedded_dllm

        folders = {"minilm": build_embedded_dllm(out / "minilm_model", out / "minilm" / "delta.safetensors")}
        folders["scratch"] = out / "scratch"
        bench = [sys.executable, "-m", "entrgi_pipelines.bench", "--methods", "none", "--threads", "1"]
        bench += ["--num-prompts", str(args.num_prompts), "--seeds", str(args.seed)]
        bench += ["-T", str(args.steps_per_sample), "-L", str(args.gen_length)]
        launch_all(
            {
                f"samples_{i}": bench + ["--dllm", str(folders[i]), "--output", str(out / f"samples_{i}.json")]
                for i in INITS
            },
            out,
        )

    from entrgi_pipelines.stack.fluency import load_fluency_model
    from entrgi_pipelines.stack.minilm import load_minilm_tokenizer

    tokenizer = load_minilm_tokenizer()
    fluency = load_fluency_model(tokenizer)
    report = {"config": vars(args), "runs": {}}
    for init in INITS:
        log = json.loads((out / init / "train_log.json").read_text())
        records = json.loads((out / f"samples_{init}.json").read_text())["records"]
        report["runs"][init] = {
            "trainable_parameters": log["trainable_parameters"],
            "evals": log["evals"],
            **sample_fluency(records, tokenizer, fluency),
        }
    if args.reference:
        ref = json.loads(Path(args.reference).read_text())
        prompts = [r["prompt"] for r in json.loads((out / "samples_minilm.json").read_text())["records"]]
        rows = [r for r in ref["records"] if r["method"] == "none" and r["seed"] == args.seed]
        rows = [r for r in rows if r["prompt"] in prompts][: len(prompts)]
        report["reference"] = sample_fluency(rows, tokenizer, fluency)
    (out / "init_comparison.json").write_text(json.dumps(report, indent=1))

    lines = [
        "| init | trainable params | " + " | ".join(f"ppl @ step {e['step']}" for e in log["evals"]) + " | minutes |"
    ]
    lines.append("|---|---|" + "---|" * (len(log["evals"]) + 1))
    for init, run in report["runs"].items():
        ppl = " | ".join(f"{e['ppl']:.1f}" for e in run["evals"])
        lines.append(
            f"| {init} | {run['trainable_parameters'] / 1e6:.1f} M | {ppl} | {run['evals'][-1]['minutes']:.1f} |"
        )
    lines += ["", "| model | samples | empty | bigram perplexity (geo-mean) | distinct-2 | punctuation tokens |"]
    lines.append("|---|---|---|---|---|---|")
    named = {f"{i} ({args.steps} steps)": r for i, r in report["runs"].items()}
    if "reference" in report:
        named["reference"] = report["reference"]
    for name, run in named.items():
        lines.append(
            f"| {name} | {run['samples']} | {run['empty']} | {run['perplexity']:.1f} | {run['distinct2']:.3f} | "
            f"{run['punctuation']:.0%} |"
        )
    for name, run in named.items():
        lines += ["", f"{name}:"] + [f"- {e}" for e in run["examples"]]
    (out / "init_comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
