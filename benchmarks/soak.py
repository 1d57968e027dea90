"""Soak: many consecutive guided calls on one pipeline, checking that nothing accumulates between calls.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/soak.py --calls 300 --threads 1 --output soak.json

Runs `--calls` EntRGi-guided calls (tiny BERT dLLM and tiny BERT reward model from `entrgi_pipelines.testing`),
cycling through a few prompt batches of different sizes and seeds, and reports:

- resident memory (RSS) after the warm-up calls and at the end, and its growth in percent (target < 5%);
- the number of live Python objects and of live torch tensors (`gc`) after the warm-up and at the end;
- whether the weights of the dLLM and of the reward model are bit-identical before and after (sha256 of the
  state dicts): guidance must never change either model.

Every call's output is checked too (no mask token left, finite rewards). The last line printed is one JSON object
with the figures. This is a benchmark, not a test: its figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import time
import warnings
from pathlib import Path

import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model, tiny_wordpiece_tokenizer

# Batches of 1 to 3 prompts, so that shapes vary from call to call as in real use.
PROMPT_BATCHES = [
    ["the cat sat on the old road"],
    ["why", "a man and a woman walked to the city by the sea"],
    ["the king and the queen", "what is the sun", "tell me of the ship"],
]


def rss_bytes() -> int:
    """The process's current resident set size (Linux `/proc/self/statm`, else psutil, else the peak RSS)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # ru_maxrss is in KiB on Linux and in bytes on macOS; the peak is an upper bound
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def state_hash(model: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of every tensor of the state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def live_objects() -> tuple[int, int]:
    """(live Python objects tracked by gc, live torch tensors among them), after a full collection."""
    gc.collect()
    objects = gc.get_objects()
    with warnings.catch_warnings():  # isinstance on deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        tensors = sum(1 for obj in objects if isinstance(obj, torch.Tensor))
    return len(objects), tensors


def run(calls: int = 300, warmup: int = 30, threads: int | None = 1, gen_length: int = 8, steps: int = 8) -> dict:
    if calls <= warmup:
        raise ValueError(f"`calls` ({calls}) must exceed `warmup` ({warmup}): growth is measured after the warm-up.")
    if threads:
        torch.set_num_threads(threads)
    tokenizer = tiny_wordpiece_tokenizer()
    model = tiny_masked_lm(len(tokenizer))
    reward_model = tiny_reward_model(len(tokenizer))
    pipe = EntRGiPipeline(model=model, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    hashes_before = {"dllm": state_hash(model), "reward_model": state_hash(reward_model)}

    def call(i: int) -> None:
        prompts = PROMPT_BATCHES[i % len(PROMPT_BATCHES)]
        out = pipe(
            prompts,
            reward_model=reward_model,
            guidance="entrgi",
            num_inference_steps=steps,
            gen_length=gen_length,
            num_samples_per_prompt=2,
            generator=torch.Generator().manual_seed(i),
        )
        if (out.sequences == tokenizer.mask_token_id).any() or not torch.isfinite(out.rewards).all():
            raise RuntimeError(f"Call {i} returned a mask token or a non-finite reward.")

    rss_trace: list[float] = []  # created before the first count, like everything the loop keeps
    start = time.perf_counter()
    for i in range(warmup):
        call(i)
    live_objects()  # the count's own list once, so that its memory is part of the baseline
    objects_after_warmup, tensors_after_warmup = live_objects()
    rss_trace.append(round(rss_bytes() / 2**20, 2))
    for i in range(warmup, calls):
        call(i)
        if (i + 1 - warmup) % max(1, (calls - warmup) // 10) == 0:
            rss_trace.append(round(rss_bytes() / 2**20, 2))
    seconds = time.perf_counter() - start
    objects_end, tensors_end = live_objects()
    rss_end = round(rss_bytes() / 2**20, 2)
    hashes_after = {"dllm": state_hash(model), "reward_model": state_hash(reward_model)}
    growth = 100 * (rss_end - rss_trace[0]) / rss_trace[0]
    return {
        "calls": calls,
        "warmup_calls": warmup,
        "config": {"gen_length": gen_length, "steps": steps, "samples_per_prompt": 2, "guidance": "entrgi"},
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "after_warmup": {
            "rss_mib": rss_trace[0],
            "python_objects": objects_after_warmup,
            "torch_tensors": tensors_after_warmup,
        },
        "end": {"rss_mib": rss_end, "python_objects": objects_end, "torch_tensors": tensors_end},
        "rss_growth_percent": round(growth, 3),
        "rss_growth_below_5_percent": growth < 5.0,
        "rss_trace_mib": rss_trace,
        "python_objects_delta": objects_end - objects_after_warmup,
        "torch_tensors_delta": tensors_end - tensors_after_warmup,
        "weights_identical": hashes_before == hashes_after,
        "weight_hashes": {name: digest[:16] for name, digest in hashes_after.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--calls", type=int, default=300, help="guided calls in all (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="calls before the first measurement (default 30)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("-L", "--gen-length", type=int, default=8)
    parser.add_argument("-T", "--steps", type=int, default=8)
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.calls <= args.warmup:
        parser.error("need --warmup >= 1 and --calls > --warmup")
    report = run(args.calls, args.warmup, args.threads, args.gen_length, args.steps)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
