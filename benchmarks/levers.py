"""Each lever of the guided step, before and after, timed alternately in one process (ratios are what count).

    PYTHONPATH=src python benchmarks/levers.py                       # P = 288 masked rows, V = 30522 (embedded)
    PYTHONPATH=src python benchmarks/levers.py --compile             # also torch.compile of the inner step
    PYTHONPATH=src python benchmarks/levers.py --mmap-threshold 1073741824   # glibc keeps large blocks (see docs)

"before" is the code as it was before issue 9, kept here verbatim as reference functions; "after" is the package's.
On CPU most of the cost of a vocabulary-wide pass is not arithmetic but the page faults of a fresh (P, V) tensor
(glibc returns large blocks to the system at every free), so the levers count passes *and* new tensors. The last line
on stdout is one JSON object: for every lever, the median seconds before and after and their ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import time

import torch

from entrgi_pipelines.guidance.entrgi import _guidance_step, entropy_weight
from entrgi_pipelines.schedulers.scheduling_masked_diffusion import _invert_cdf, entropy_, sample_tokens

# --- before: the functions as they were (commit c506c78) ------------------------------------------------------------


def nucleus_before(log_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    key = ((-log_probs).clamp(max=40.0) * (4095 / 40.0)).long()
    mass = log_probs.new_zeros(*key.shape[:-1], 4096).scatter_add_(-1, key, log_probs.exp())
    before = mass.cumsum(-1) - mass
    return (before >= top_p).gather(-1, key)


def sample_tokens_before(logits: torch.Tensor, top_p: float, generator) -> torch.LongTensor:
    log_probs = logits.float().log_softmax(-1)
    probs = log_probs.exp()
    probs = probs.masked_fill(nucleus_before(log_probs, top_p), 0.0)
    return _invert_cdf(probs.cumsum(-1), generator)


def entropy_weight_before(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.detach().float()
    log_probs = logits.log_softmax(-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
    return (entropy / math.log(logits.shape[-1])).clamp(0.0, 1.0)


def confidence_before(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    log_probs = (logits.float() / temperature).log_softmax(-1)
    probs = log_probs.exp()
    return (probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)


# --- the levers -----------------------------------------------------------------------------------------------------


def step_before(phi: torch.Tensor, grad: torch.Tensor, args, generator) -> None:
    """One Adam step's vocabulary work as it was: phi / tau, softmax, sampling on the scaled logits, and the
    backward of the softmax and of the division."""
    scaled = phi / args.tau
    probs = scaled.softmax(-1)
    sample_tokens_before(scaled.detach(), args.top_p, generator)
    torch.autograd.grad(probs, phi, grad)


def step_after(scaled: torch.Tensor, grad: torch.Tensor, args, generator, compile=False) -> None:
    """The same now: Adam runs on phi / tau; one softmax feeds the reward and the (exact, sorted) top-p sampler.
    (Issue 25 removed the CPU workspace of issue 9's lever 5: it kept four more (P, V) tensors alive.)"""
    probs, cdf = _guidance_step(scaled, args.top_p, compile)
    _invert_cdf(cdf, generator)
    torch.autograd.grad(probs, scaled, grad)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.process_time()  # this process's CPU time: the machine is shared
        fn()
        out.append(time.process_time() - start)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("-P", "--rows", type=int, default=288, help="masked rows (default 288: B*K=16, L=32, T=8)")
    parser.add_argument("-V", "--vocab", type=int, default=30522)
    parser.add_argument("-N", "--sequences", type=int, default=16, help="B*K, for the logits placement lever")
    parser.add_argument("-L", "--gen-length", type=int, default=32)
    parser.add_argument("--tau", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd inner step")
    parser.add_argument("--mmap-threshold", type=int, help="glibc M_MMAP_THRESHOLD in bytes, set before anything")
    args = parser.parse_args(argv)
    if args.mmap_threshold:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, args.mmap_threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2 * args.mmap_threshold)  # M_TRIM_THRESHOLD: keep freed blocks for reuse
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.rows, args.vocab, generator=g) * 3
    phi = logits.clone().requires_grad_(True)
    scaled = (logits / args.tau).requires_grad_(True)
    grad = torch.randn(args.rows, args.vocab, generator=g)
    N, L = args.sequences, args.gen_length
    full = torch.randn(N, L, args.vocab, generator=g)
    masked = torch.rand(N, L, generator=g) < args.rows / (N * L)
    rows, columns = masked.nonzero(as_tuple=True)
    guided = torch.randn(rows.numel(), args.vocab, generator=g)

    levers = {
        "guidance step: sampling + tempered softmax forward/backward": (
            lambda: step_before(phi, grad, args, torch.Generator().manual_seed(1)),
            lambda: step_after(scaled, grad, args, torch.Generator().manual_seed(1)),
        ),
        "scheduler sampling (sample_tokens)": (
            lambda: sample_tokens_before(logits, args.top_p, torch.Generator().manual_seed(1)),
            lambda: sample_tokens(logits, top_p=args.top_p, generator=torch.Generator().manual_seed(1)),
        ),
        "entropy weight": (lambda: entropy_weight_before(logits), lambda: entropy_weight(logits)),
        "scheduler entropy confidence": (
            lambda: confidence_before(logits, args.tau),
            lambda: -entropy_(logits.float().div(args.tau).log_softmax(-1)),
        ),
        "guided logits back into (N, L, V)": (
            lambda: full.masked_scatter(masked[..., None], guided),
            lambda: full.index_put((rows, columns), guided),
        ),
    }
    compile_seconds = None
    if args.compile:
        start = time.process_time()
        for rows_now in (args.rows, args.rows // 2):  # the second shape makes the compiled graph dynamic in P
            x = scaled.detach()[:rows_now].clone().requires_grad_(True)
            step_after(x, grad[:rows_now], args, torch.Generator().manual_seed(1), compile=True)
        compile_seconds = time.process_time() - start
        levers["torch.compile of the inner step (before: eager)"] = (
            lambda: step_after(scaled, grad, args, torch.Generator().manual_seed(1)),
            lambda: step_after(scaled, grad, args, torch.Generator().manual_seed(1), compile=True),
        )

    results = {}
    for name, (before, after) in levers.items():
        before(), after()  # warm-up
        b, a = [], []
        for _ in range(args.repeats):  # alternately, so that load changes hit both
            b += timed(before, 1)
            a += timed(after, 1)
        results[name] = {"before_s": statistics.median(b), "after_s": statistics.median(a)}
        results[name]["after_over_before"] = results[name]["after_s"] / results[name]["before_s"]
        print(
            f"{results[name]['before_s'] * 1e3:9.2f} ms -> {results[name]['after_s'] * 1e3:9.2f} ms "
            f"({results[name]['after_over_before']:.2f}x)  {name}"
        )
    summary = {
        "shapes": {"P": args.rows, "V": args.vocab, "N": N, "L": L},
        "threads": args.threads,
        "mmap_threshold": args.mmap_threshold,
        "compile_seconds": compile_seconds,
        "load_average": os.getloadavg(),
        "levers": results,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
