"""Peak memory of a guided call at the paper's vocabulary, on CPU, in units of one float32 `(P, V)` tensor.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/guidance_memory.py                 # V = 152,064, N = 4, L = 128
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/guidance_memory.py -N 16           # the paper's per-GPU batch

The vocabulary-wide tensors of guidance scale with `P * V` (`P` masked positions, at the first step `N * L`) while
the models here are tiny random BERTs (2 layers, hidden size 32) with the paper's vocabulary, so the figures are the
guidance's own memory, the part that a 7B dLLM and a 1.7B reward do not change. A `TorchDispatchMode` reads glibc's
live heap (`mallinfo2`: arena bytes in use plus mmapped blocks) after every operator of the call, the autograd
backward's included, and keeps the peak, overall and during the Adam backward (`torch.autograd.grad`); the live heap
before the call (the models) is subtracted. One denoising step with `M` Adam steps is enough: the first step has the
most masked rows, and Adam's two moments exist from the first `optimizer.step()` on, so the second Adam step's
backward is the steady state.

`unit` = `P * V * 4` bytes at the first step (`P = N * L`); the `(N, L, V)` logits of the dLLM are one unit.
`--no-workspace` runs code that still has the CPU `Workspace` (issue 25's "before") without it, as it ran on CUDA.
The last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import BertForMaskedLM, BertForSequenceClassification

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.testing import tiny_bert_config, tiny_wordpiece_tokenizer


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def live_heap() -> int:
    """Bytes of the process's heap in use now (glibc): small blocks in the arenas plus mmapped large blocks."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class PeakHeap(TorchDispatchMode):
    """The peak live heap after every operator, overall and while `in_backward` is set."""

    def __init__(self):
        super().__init__()
        self.peak = self.backward_peak = live_heap()
        self.in_backward = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        now = live_heap()
        self.peak = max(self.peak, now)
        if self.in_backward:
            self.backward_peak = max(self.backward_peak, now)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=152_064, help="V (default: Dream's 152,064)")
    parser.add_argument("-N", "--sequences", type=int, default=4, help="sequences per call, B * K (default 4)")
    parser.add_argument("-L", "--gen-length", type=int, default=128)
    parser.add_argument("-M", "--guidance-steps", type=int, default=2)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--tau", type=float, default=0.7)
    parser.add_argument("--no-workspace", action="store_true", help="old code: run without its CPU workspace")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before / after)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    tokenizer = tiny_wordpiece_tokenizer()
    positions = args.gen_length + 32  # room for the prompt
    torch.manual_seed(0)
    dllm = BertForMaskedLM(tiny_bert_config(args.vocab, max_position_embeddings=positions)).eval()
    config = tiny_bert_config(args.vocab, max_position_embeddings=positions + 16, num_labels=1)
    reward_model = BertForSequenceClassification(config).eval()
    pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    guidance = RewardGuidance(reward_model, tokenizer, guidance="entrgi", guidance_steps=args.guidance_steps)
    if args.no_workspace:
        guidance._step_workspace = lambda device: None  # the accelerator path of code that had one
    prompts = ["the cat sat on the old road"] * args.sequences

    mode = PeakHeap()
    grad = torch.autograd.grad

    def backward(*a, **k):
        mode.in_backward = True
        try:
            return grad(*a, **k)
        finally:
            mode.in_backward = False

    torch.autograd.grad = backward
    baseline = live_heap()
    start = time.process_time()
    try:
        with mode:
            out = pipe(
                prompts,
                callback_on_step_end=guidance,
                gen_length=args.gen_length,
                num_inference_steps=1,
                num_samples_per_prompt=1,
                top_p=args.top_p,
                temperature=args.tau,
                generator=torch.Generator().manual_seed(0),
            )
    finally:
        torch.autograd.grad = grad
    seconds = time.process_time() - start
    unit = args.sequences * args.gen_length * args.vocab * 4
    result = {
        "label": args.label,
        "shape": {"V": args.vocab, "N": args.sequences, "L": args.gen_length, "M": args.guidance_steps},
        "unit_bytes": unit,
        "peak_gib": round((mode.peak - baseline) / 2**30, 3),
        "peak_units": round((mode.peak - baseline) / unit, 2),
        "adam_backward_peak_units": round((mode.backward_peak - baseline) / unit, 2),
        "cpu_s": round(seconds, 1),
        "tokens_sum": int(out.sequences.sum()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
