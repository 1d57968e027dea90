"""Which demo settings make reward guidance visible within the Space's time budget: a sweep on the bundled v2 prompts.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 5 python studies/space_defaults.py --output docs/space_defaults.json

Each request is what the Space runs for one visitor (examples/space/app.py, `entrgi_pipelines.demo`): the prompt
sampled K times without guidance (Best-of-N) and K times with guidance toward its target, same seed (0), on the
embedded dLLM v2 with the MiniLM similarity reward; the best sample of each side (by reward) is scored by the
held-out MiniLM topic judge. Per config it records, for the first `--num-prompts` bundled v2 prompts:

- the judge's probability for the best unguided and the best guided sample, and their paired difference (the lift
  a visitor sees), with a 95% normal interval over prompts;
- the CPU seconds of each half, of the judge and of the animation, on one thread. A single-threaded request waits on
  nothing but the CPU, so its CPU seconds estimate its wall time on one idle core; the wall seconds are recorded too
  (the machine is shared, so they also measure the neighbours), and so is a fixed reference workload (matrix products)
  timed before every config, whose CPU/wall times show how busy the core was.

The unguided half depends only on (K, T, L, prompt) and the seed, so it is computed once per shape and reused by every
method at that shape (it is deterministic: the same numbers as recomputing it). The output is written atomically
after every config; rerunning with the same `--output` skips the configs already there. `--choose` picks the
defaults: the largest mean judge lift among configs whose mean request (both halves, judge and animation) takes at
most `--budget` CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from entrgi_pipelines.bench import mean_ci, read_prompts
from entrgi_pipelines.checkpoint import write_json_atomic
from entrgi_pipelines.demo import MethodSamples, denoising_gif
from entrgi_pipelines.runs import guided_samples, judge_scores, sampling_settings
from entrgi_pipelines.stack import load_embedded_stack

SEED = 0  # the Space's default seed
# Lifts closer than this (1 point of the judge's probability) count as a tie, won by the faster config. Added when
# K=4 at T=L=16 and 24 came out 0.02 points apart with intervals of +-13 and +-16 points.
TIE = 0.01
# The sweep, sized before it ran from one timed request per shape (`QUICK_TIMING`, CPU seconds of each half on the
# first prompt, the machine shared): K=4, T=L=32 took 42 CPU-s with M=3 and 33 with M=2, so T=L=32 runs with K=2.
# Stage 1 at the cheapest shape (K=4, T=L=16, M=3): EntRGi at eta 0.5, 1 and 2, then APS and the expectation at the
# best of those (2). Stage 2: the best (method, eta) of stage 1 at larger shapes (K, T=L, M). The machine ran about 3
# to 4 wall-seconds per CPU-second (shared by four users, load 6-7 on 2 cores), so the grid was cut to 8 configs.
QUICK_TIMING = [
    {"K": 4, "T=L": 16, "M": 3, "unguided_cpu_s": 2.42, "guided_cpu_s": 11.30},
    {"K": 4, "T=L": 24, "M": 3, "unguided_cpu_s": 5.19, "guided_cpu_s": 20.85},
    {"K": 4, "T=L": 32, "M": 3, "unguided_cpu_s": 8.09, "guided_cpu_s": 33.72},
    {"K": 2, "T=L": 24, "M": 3, "unguided_cpu_s": 2.56, "guided_cpu_s": 13.95},
    {"K": 4, "T=L": 32, "M": 2, "unguided_cpu_s": 7.69, "guided_cpu_s": 25.73},
    {"K": 2, "T=L": 32, "M": 3, "unguided_cpu_s": 4.45, "guided_cpu_s": 19.55},
]
STAGE1 = [("entrgi", 0.5, 3, 4, 16), ("entrgi", 1.0, 3, 4, 16), ("entrgi", 2.0, 3, 4, 16)] + [
    (method, 2.0, 3, 4, 16) for method in ("aps", "expectation")
]
STAGE2_SHAPES = [(2, 3, 24), (4, 3, 24), (2, 3, 32)]  # (K, M, T=L)


def cpu_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime


class Clock:
    """CPU and wall seconds of a block."""

    def __enter__(self):
        self.cpu, self.wall = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu, self.wall = cpu_seconds() - self.cpu, time.perf_counter() - self.wall


def reference_workload() -> dict:
    """A fixed CPU workload (float32 matrix products): its seconds tell how fast this core was at the time."""
    a = torch.randn(384, 384, generator=torch.Generator().manual_seed(0))
    with Clock() as clock:
        for _ in range(200):
            b = a @ a
            a = b / b.norm()
    return {"cpu_s": round(clock.cpu, 3), "wall_s": round(clock.wall, 3), "load_1min": round(os.getloadavg()[0], 2)}


def grid(configs: dict, num_prompts: int):
    """Stage 1, then stage 2 with the (method, eta) of stage 1's largest judge lift (known once stage 1 is done)."""
    yield from STAGE1
    stage1 = [configs[config_key(*c)] for c in STAGE1]
    assert all(c["summary"]["n"] == num_prompts for c in stage1), "stage 1 is not complete"
    best = max(stage1, key=lambda c: c["summary"]["judge_lift"])
    for k, m, length in STAGE2_SHAPES:
        yield best["method"], best["eta"], m, k, length


def config_key(method: str, eta: float, m: int, k: int, length: int) -> str:
    return f"{method} eta={eta} M={m} K={k} T=L={length}"


def run_side(stack, prompt: str, target: str, method: str, settings) -> tuple[MethodSamples, Clock, Clock]:
    """One half of a request (as `demo.compare_methods` runs it), timed, and the judge on its samples, timed."""
    with Clock() as sampling:
        out = guided_samples(
            stack.pipe,
            stack.reward_model,
            stack.reward_tokenizer,
            prompt,
            target,
            method,
            settings,
            torch.Generator().manual_seed(SEED),
            output_trajectory=True,
        )
    texts = out.all_texts[0]
    with Clock() as judging:
        judged = judge_scores(stack.judge, stack.judge_tokenizer, [target] * len(texts), texts)
    side = MethodSamples(method, method, texts, out.rewards[0].tolist(), judged, out.trajectory[:, 0])
    return side, sampling, judging


def summarise(records: list[dict]) -> dict:
    lift = mean_ci([r["judge_guided"] - r["judge_unguided"] for r in records])
    reward_lift = mean_ci([r["reward_guided"] - r["reward_unguided"] for r in records])
    cpu = [r["request_cpu_s"] for r in records]
    return {
        "n": len(records),
        "judge_unguided": statistics.fmean(r["judge_unguided"] for r in records),
        "judge_guided": statistics.fmean(r["judge_guided"] for r in records),
        "judge_lift": lift[0],
        "judge_lift_ci": lift[1],
        "judge_raised_share": sum(r["judge_guided"] > r["judge_unguided"] for r in records) / len(records),
        "reward_lift": reward_lift[0],
        "reward_lift_ci": reward_lift[1],
        "request_cpu_s": statistics.fmean(cpu),
        "request_cpu_s_max": max(cpu),
        "request_wall_s": statistics.fmean(r["request_wall_s"] for r in records),
    }


def sweep(args) -> None:
    torch.set_num_threads(1)
    output = Path(args.output)
    result = json.loads(output.read_text()) if output.exists() else {}
    prompts = read_prompts(None, args.num_prompts, "v2")
    result.setdefault("setup", {}).update(
        {
            "dllm": "v2",
            "reward": "similarity (MiniLM cosine of target and response)",
            "judge": "MiniLM topic judge (held out: never guides)",
            "prompts": f"the first {len(prompts)} rows of stack/data/prompts_v2.jsonl, each toward its own target",
            "seed": SEED,
            "tau": 0.7,
            "top_p": 0.95,
            "threads": 1,
            "budget_cpu_s": args.budget,
            "quick_timing": QUICK_TIMING,
            "stages": "stage 1: method x eta at K=4, T=L=16, M=3; stage 2: stage 1's best (method, eta) at "
            + ", ".join(f"K={k} T=L={t} M={m}" for k, m, t in STAGE2_SHAPES),
        }
    )
    configs = result.setdefault("configs", {})
    stack = load_embedded_stack(dllm_version="v2")
    stack.pipe.set_progress_bar_config(disable=True)
    unguided_cache: dict[tuple, tuple] = {}
    frames = Path(tempfile.mkdtemp(prefix="space-sweep-"))
    for method, eta, m, k, length in grid(configs, len(prompts)):
        key = config_key(method, eta, m, k, length)
        if key in configs and configs[key]["summary"]["n"] == len(prompts):
            continue
        reference = reference_workload()
        settings = sampling_settings(num_samples=k, steps=length, gen_length=length, guidance_steps=m, eta=eta)
        records = []
        for i, row in enumerate(prompts):
            prompt, target = row["prompt"], row["target"]
            shape = (k, length, prompt)
            if shape not in unguided_cache:
                unguided_cache[shape] = run_side(stack, prompt, target, "none", settings)
            unguided, unguided_clock, unguided_judge = unguided_cache[shape]
            guided, guided_clock, guided_judge = run_side(stack, prompt, target, method, settings)
            if i == 0:  # the animation's cost depends on T and K, not on the prompt: timed once per config
                with Clock() as animation:
                    denoising_gif(stack, (unguided, guided), frames / "a.gif", prompt, target)
            cpu = unguided_clock.cpu + guided_clock.cpu + unguided_judge.cpu + guided_judge.cpu + animation.cpu
            wall = unguided_clock.wall + guided_clock.wall + unguided_judge.wall + guided_judge.wall + animation.wall
            records.append(
                {
                    "prompt": prompt,
                    "target": target,
                    "prompt_tokens": len(stack.pipe.tokenizer(prompt)["input_ids"]),
                    "reward_unguided": unguided.rewards[unguided.best],
                    "reward_guided": guided.rewards[guided.best],
                    "judge_unguided": unguided.judge[unguided.best],
                    "judge_guided": guided.judge[guided.best],
                    "unguided_cpu_s": round(unguided_clock.cpu, 3),
                    "guided_cpu_s": round(guided_clock.cpu, 3),
                    "judge_cpu_s": round(unguided_judge.cpu + guided_judge.cpu, 3),
                    "animation_cpu_s": round(animation.cpu, 3),
                    "request_cpu_s": round(cpu, 3),
                    "request_wall_s": round(wall, 3),
                }
            )
            print(f"{key} prompt {i + 1}/{len(prompts)}: {records[-1]['request_cpu_s']:.1f} CPU-s", flush=True)
        configs[key] = {
            "method": method,
            "eta": eta,
            "guidance_steps": m,
            "num_samples": k,
            "steps": length,
            "gen_length": length,
            "reference": reference,
            "summary": summarise(records),
            "records": records,
        }
        write_json_atomic(output, result)
        s = configs[key]["summary"]
        print(
            f"{key}: judge {s['judge_unguided']:.3f} -> {s['judge_guided']:.3f} "
            f"(lift {s['judge_lift']:+.3f} ± {s['judge_lift_ci']:.3f}), {s['request_cpu_s']:.1f} CPU-s/request",
            flush=True,
        )
    choose(result, args.budget)
    write_json_atomic(output, result)


def choose(result: dict, budget: float, tie: float = TIE) -> dict:
    """Writes `result["chosen"]`: among the configs whose mean request takes at most `budget` CPU-s, the fastest of
    those whose mean judge lift is within `tie` of the largest (a tie of lifts goes to the shorter wait)."""
    fitting = {k: c for k, c in result["configs"].items() if c["summary"]["request_cpu_s"] <= budget}
    if not fitting:
        raise SystemExit(f"no config's mean request is within {budget} CPU-s")
    largest = max(c["summary"]["judge_lift"] for c in fitting.values())
    tied = [k for k, c in fitting.items() if c["summary"]["judge_lift"] >= largest - tie]
    key = min(tied, key=lambda k: fitting[k]["summary"]["request_cpu_s"])
    chosen = fitting[key]
    result["chosen"] = {
        "config": key,
        "rule": f"the largest mean judge lift among configs whose mean request takes <= {budget} CPU-s on one "
        f"thread; of lifts within {tie} of it, the fastest",
        "tied": tied,
        **{k: chosen[k] for k in ("method", "eta", "guidance_steps", "num_samples", "steps", "gen_length")},
        "summary": chosen["summary"],
    }
    return result["chosen"]


def markdown_table(result: dict) -> str:
    """The sweep as a markdown table, configs in the order they ran, the chosen one in bold."""
    chosen = result.get("chosen", {}).get("config")
    fastest = min(c["reference"]["cpu_s"] for c in result["configs"].values())
    lines = [
        "| config | n | on-topic: unguided → guided | judge lift (95% CI) | prompts raised | reward lift | "
        "CPU-s / request (max) | idle-core estimate | wall-s / request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, config in result["configs"].items():
        s = config["summary"]
        # the reference workload ran slower when the core was busier: scale to its fastest time in the run
        idle = s["request_cpu_s"] * fastest / config["reference"]["cpu_s"]
        name = f"**{key}**" if key == chosen else key
        lines.append(
            f"| {name} | {s['n']} | {s['judge_unguided']:.0%} → {s['judge_guided']:.0%} | "
            f"{100 * s['judge_lift']:+.1f} ± {100 * s['judge_lift_ci']:.1f} pts | "
            f"{round(s['judge_raised_share'] * s['n'])}/{s['n']} | "
            f"{s['reward_lift']:+.3f} ± {s['reward_lift_ci']:.3f} | "
            f"{s['request_cpu_s']:.1f} ({s['request_cpu_s_max']:.1f}) | {idle:.1f} | {s['request_wall_s']:.1f} |"
        )
    return "\n".join(lines)


def time_shapes(args) -> None:
    """One whole request (first prompt, EntRGi, eta 1) per shape, on one thread: prints the CPU seconds of each part.

    With `--record`, the timings are also added to `--output` under `shape_timings` (replacing those of the same
    shapes): they cover the small and unequal (K, T=L, M) that the sweep's configs do not, for the Space's cost
    model (`demo.CostModel.fit` reads both).
    """
    torch.set_num_threads(1)
    stack = load_embedded_stack(dllm_version="v2")
    stack.pipe.set_progress_bar_config(disable=True)
    row = read_prompts(None, 1, "v2")[0]
    prompt, target = row["prompt"], row["target"]
    frames = Path(tempfile.mkdtemp(prefix="space-sweep-"))
    timings = []
    for k, length, m in args.time_shapes:
        settings = sampling_settings(num_samples=k, steps=length, gen_length=length, guidance_steps=m, eta=1.0)
        unguided, unguided_clock, unguided_judge = run_side(stack, prompt, target, "none", settings)
        guided, guided_clock, guided_judge = run_side(stack, prompt, target, "entrgi", settings)
        with Clock() as animation:
            denoising_gif(stack, (unguided, guided), frames / "a.gif", prompt, target, stacked=True)
        timings.append(
            {
                "num_samples": k,
                "steps": length,
                "gen_length": length,
                "guidance_steps": m,
                "prompt_tokens": len(stack.pipe.tokenizer(prompt)["input_ids"]),
                "unguided_cpu_s": round(unguided_clock.cpu, 3),
                "guided_cpu_s": round(guided_clock.cpu, 3),
                "judge_cpu_s": round(unguided_judge.cpu + guided_judge.cpu, 3),
                "animation_cpu_s": round(animation.cpu, 3),
                "reference": reference_workload(),
            }
        )
        print(json.dumps(timings[-1]), flush=True)
    if args.record:
        result = json.loads(Path(args.output).read_text())
        shapes = {(t["num_samples"], t["steps"], t["guidance_steps"]) for t in timings}
        kept = [
            t
            for t in result.get("shape_timings", [])
            if (t["num_samples"], t["steps"], t["guidance_steps"]) not in shapes
        ]
        result["shape_timings"] = kept + timings
        write_json_atomic(args.output, result)


def shape(text: str) -> tuple[int, int, int]:
    k, length, m = (int(v) for v in text.split(","))
    return k, length, m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="docs/space_defaults.json")
    parser.add_argument("--num-prompts", type=int, default=24)
    parser.add_argument("--budget", type=float, default=30.0, help="CPU seconds per request on one thread")
    parser.add_argument("--time-shapes", type=shape, nargs="+", metavar="K,T,M", help="only time one request each")
    parser.add_argument("--record", action="store_true", help="with --time-shapes: add the timings to --output")
    parser.add_argument("--choose", action="store_true", help="only (re)write the choice of the saved sweep")
    parser.add_argument("--table", action="store_true", help="only print the saved sweep as a markdown table")
    args = parser.parse_args()
    if args.time_shapes:
        time_shapes(args)
    elif args.table:
        print(markdown_table(json.loads(Path(args.output).read_text())))
    elif args.choose:
        result = json.loads(Path(args.output).read_text())
        print(json.dumps(choose(result, args.budget), indent=1))
        write_json_atomic(args.output, result)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
