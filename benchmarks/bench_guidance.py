"""Times a guided call against its floor, and says where the rest goes.

    PYTHONPATH=src python benchmarks/bench_guidance.py                      # embedded stack, CPU, one thread
    PYTHONPATH=src python benchmarks/bench_guidance.py --dllm tiny --reward tiny --vocab 30000 -L 128
    PYTHONPATH=src python benchmarks/bench_guidance.py -L 32 -T 32 --block-length 8 --threshold 0.9  # threshold
    python benchmarks/bench_guidance.py --device cuda                        # 7B / 1.7B shapes, random weights

The floor of a call is `T*F + T_g*M*(R + S + X)`, each term timed in isolation at the call's own shapes, with `P`
the average number of masked positions over the guided steps (`T_g` of them):

- `F`: one dLLM forward (with its LM head) over all `B*K` sequences;
- `R`: one reward-model forward and backward to `inputs_embeds` over all `B*K` reward inputs;
- `S`: the soft-embedding product `(P, V) @ (V, D)` and its backward with respect to the probabilities;
- `X`: one softmax over `(P, V)` and its backward.

`overhead = guided / floor`. The guided call, the unguided call (`guidance="none"`, Best-of-N scoring) and the four
terms are timed alternately, `--repeats` times, and the medians are compared, so that a noisy machine shifts them
together. A separate instrumented call splits the guided time into regions (dLLM, reward forward, backward, soft
embeddings, sampling, top-p, entropy weight, Adam, copies, Python); on CUDA the regions are CUDA events, which add no
host synchronisation. The last line on stdout is one JSON object.

On CUDA the defaults are bf16 models with random weights built from configs (nothing is downloaded): a Dream-7B-shaped
dLLM (Qwen2 architecture, logits shifted) and a Skywork-Reward-V2-Qwen3-1.7B-shaped reward model (Qwen3 sequence
classifier), one 100-token prompt, K=4, L=128.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from unittest import mock

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance import entrgi as entrgi_module
from entrgi_pipelines.guidance import reward_guidance as guidance_module
from entrgi_pipelines.guidance.rewards import RewardTerm
from entrgi_pipelines.schedulers import scheduling_masked_diffusion as scheduler_module

# Published shapes (config.json of Dream-org/Dream-v0-Instruct-7B and Skywork/Skywork-Reward-V2-Qwen3-1.7B).
DREAM_7B = dict(
    vocab_size=152_064,
    hidden_size=3584,
    intermediate_size=18_944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=131_072,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
QWEN3_1_7B = dict(
    vocab_size=151_936,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40_960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
DLLMS = ("embedded", "tiny", "dream-7b")
REWARDS = ("embedded", "tiny", "lm-judge", "qwen3-1.7b")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dllm", choices=DLLMS, help="default: embedded on CPU, dream-7b on CUDA")
    parser.add_argument("--reward", choices=REWARDS, help="default: embedded on CPU, qwen3-1.7b on CUDA")
    parser.add_argument("--method", default="entrgi", choices=("entrgi", "aps", "expectation"))
    parser.add_argument("-B", "--prompts", type=int, help="prompts per call (default 4 on CPU, 1 on CUDA)")
    parser.add_argument("-K", "--num-samples", type=int, default=4, help="samples per prompt")
    parser.add_argument("-L", "--gen-length", type=int, help="response tokens (default 32 on CPU, 128 on CUDA)")
    parser.add_argument("-T", "--steps", type=int, help="denoising steps (default 8 on CPU, 32 on CUDA)")
    parser.add_argument("-M", "--guidance-steps", type=int, default=3, help="Adam steps per denoising step")
    parser.add_argument("--eta", type=float, default=0.5)
    parser.add_argument("--tau", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        help="a random prompt of this many tokens (default: bundled prompts on the "
        "embedded stack, 8 tokens on tiny models, 100 on CUDA)",
    )
    parser.add_argument("--vocab", type=int, help="vocabulary of the tiny models (default: the tiny tokenizer's)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden size of the tiny models")
    parser.add_argument("--layers", type=int, default=2, help="layers of the tiny models")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="model dtype (default fp32 CPU, bf16 CUDA)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (medians are reported)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the inner guidance step")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented call")
    parser.add_argument("--wall", action="store_true", help="CPU: time wall-clock rather than the process's CPU time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-length", type=int, help="decode in blocks of this many tokens (default: one block)")
    parser.add_argument(
        "--confidence",
        default="entropy",
        help="the scheduler's confidence rule (default entropy; maskgit_plus: the "
        "token's probability, which thresholds are usually set on)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="also time threshold decoding at this threshold beside fixed steps, per generated token",
    )
    parser.add_argument("--output", help="also write the JSON object to this file")
    return parser


def resolve_defaults(args) -> argparse.Namespace:
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    defaults = dict(
        dllm="dream-7b" if cuda else "embedded",
        reward="qwen3-1.7b" if cuda else "embedded",
        prompts=1 if cuda else 4,
        gen_length=128 if cuda else 32,
        steps=32 if cuda else 8,
        dtype="bfloat16" if cuda else "float32",
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.prompt_tokens is None:
        args.prompt_tokens = 100 if cuda else (None if args.dllm == "embedded" else 8)
    for name in ("prompts", "num_samples", "gen_length", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.guidance_steps < 1:
        raise SystemExit("--guidance-steps must be >= 1: the benchmark times guidance.")
    return args


# --- models -------------------------------------------------------------------------------------------------------


def _tiny_config(args, vocab: int, positions: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=2,
        intermediate_size=2 * args.hidden,
        max_position_embeddings=positions,
        **extra,
    )


def _from_config(cls, config, device, dtype):
    """A model with random weights, created directly on `device` in `dtype` (no download, no CPU detour)."""
    with torch.device(device):
        return cls._from_config(config, dtype=dtype).eval()


def build_stack(args):
    """`(pipe, reward_model, reward_tokenizer, call_inputs)` for the chosen models; `call_inputs` go to the pipeline."""
    from transformers import BertForMaskedLM, BertForSequenceClassification

    from entrgi_pipelines.testing import tiny_wordpiece_tokenizer

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(args.seed)
    stack = None
    if "embedded" in (args.dllm, args.reward):
        from entrgi_pipelines.stack import load_embedded_stack

        stack = load_embedded_stack()
    tokenizer = stack.pipe.tokenizer if args.dllm == "embedded" else tiny_wordpiece_tokenizer()
    prompt_len = (args.prompt_tokens or 32) + 8
    positions = max(128, prompt_len + args.gen_length + 8)
    vocab = args.vocab or len(tokenizer)

    if args.dllm == "embedded":
        pipe = stack.pipe
    elif args.dllm == "tiny":
        torch.manual_seed(args.seed)
        dllm = _from_config(BertForMaskedLM, _tiny_config(args, vocab, positions), device, dtype)
        pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    else:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        dllm = _from_config(Qwen2ForCausalLM, Qwen2Config(**DREAM_7B), device, dtype)
        # Dream predicts token i at position i - 1 (its model type says so; this Qwen2 stand-in needs telling).
        pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler(), logits_shift=True)
    if args.dllm == "embedded":
        pipe.model.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)

    reward_tokenizer = tokenizer
    if args.reward == "embedded":
        reward_model, reward_tokenizer = stack.reward_model, stack.reward_tokenizer
    elif args.reward == "tiny":
        torch.manual_seed(args.seed + 1)
        config = _tiny_config(args, vocab, positions + prompt_len, num_labels=1)
        reward_model = _from_config(BertForSequenceClassification, config, device, dtype)
    elif args.reward == "lm-judge":
        reward_model, reward_tokenizer = load_lm_judge_reward()
    else:
        from transformers import Qwen3Config, Qwen3ForSequenceClassification

        config = Qwen3Config(**QWEN3_1_7B, num_labels=1, pad_token_id=tokenizer.pad_token_id)
        reward_model = _from_config(Qwen3ForSequenceClassification, config, device, dtype)
    reward_model = reward_model.to(device=device, dtype=dtype).eval()

    B = args.prompts
    if args.prompt_tokens is None:  # the bundled prompts and their targets, cycled when B exceeds them
        from entrgi_pipelines.bench import read_prompts

        rows = read_prompts(None, None)
        rows = [rows[i % len(rows)] for i in range(B)]
        call_inputs = {
            "prompt": [r["prompt"] for r in rows],
            "reward_prompt": [r.get("target") or r["prompt"] for r in rows],
        }
    else:  # random ordinary tokens (ids past the special tokens of the tokenizer)
        low = len(getattr(tokenizer, "all_special_ids", [])) + 1
        high = min(len(tokenizer), vocab) - 1
        low = min(low, high - 1) if args.dllm != "embedded" else 2000
        call_inputs = {"input_ids": torch.randint(low, high, (B, args.prompt_tokens), generator=generator)}
    return pipe, reward_model, reward_tokenizer, call_inputs


def load_lm_judge_reward():
    """The stack's LM-judge reward (`entrgi_pipelines.stack.lm_reward`), when this checkout has it."""
    try:
        from entrgi_pipelines.stack import lm_reward
    except ImportError as error:
        raise SystemExit(f"--reward lm-judge needs entrgi_pipelines.stack.lm_reward ({error}).") from error
    return lm_reward.load_lm_judge_reward()


# --- timing -------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# On CPU, time is the process's CPU time (user + system, page faults included): on a shared machine it counts the
# work of this process alone, where wall-clock time also counts the others' (`--wall` switches to it).
cpu_clock = time.process_time


def timed(fn, device: torch.device) -> float:
    """Seconds of `fn()` (CUDA events on CUDA, after a synchronisation that is not timed; CPU time on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start = cpu_clock()
    fn()
    return cpu_clock() - start


class Regions:
    """Exclusive time of named, possibly nested regions. On CUDA each mark is a CUDA event: no host sync."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.records: list[list] = []  # [name, start, end, parent index]
        self.stack: list[int] = []

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return cpu_clock()

    def start(self, name: str) -> None:
        self.records.append([name, self._mark(), None, self.stack[-1] if self.stack else None])
        self.stack.append(len(self.records) - 1)

    def stop(self) -> None:
        self.records[self.stack.pop()][2] = self._mark()

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def region(*args, **kwargs):
            self.start(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop()

        return region

    def exclusive(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        spans = [(s.elapsed_time(e) / 1000.0) if self.cuda else (e - s) for _, s, e, _ in self.records if e is not None]
        children = [0.0] * len(spans)
        for (_, _, _, parent), span in zip(self.records, spans):
            if parent is not None:
                children[parent] += span
        totals: dict[str, float] = {}
        for (name, *_), span, inner in zip(self.records, spans, children):
            totals[name] = totals.get(name, 0.0) + span - inner
        return totals


def instrumented_call(pipe, guidance: RewardGuidance, call, device: torch.device, compiled: bool = False):
    """One guided call with every region timed; also returns the masked rows per guided step and the inputs of the
    dLLM and reward-model calls (for the floor terms)."""
    regions = Regions(device)
    masked_rows: list[int] = []
    captured: dict[str, object] = {"rewards": []}

    def optimize_logits(logits, *args, **kwargs):
        index = kwargs.get("index")  # the guided rows of larger logits (issue 25), else the logits are the rows
        masked_rows.append(int(logits.shape[0] if index is None else index[0].numel()))
        return regions.wrap("guidance: optimize_logits rest (tempered softmax, phi copy, loss, Python)", original)(
            logits, *args, **kwargs
        )

    original = guidance_module.optimize_logits

    def model_forward(*args, **kwargs):
        captured.setdefault("dllm", (args, kwargs))
        return regions.wrap("dLLM forward", model_forward_original)(*args, **kwargs)

    model_forward_original = pipe.model.forward
    terms = list(guidance.terms)

    def adapter_forward(term, forward):
        def capture(*args, **kwargs):
            if len(captured["rewards"]) < len(terms):
                captured["rewards"].append((term, {**kwargs, "inputs_embeds": kwargs["inputs_embeds"].detach()}))
            return regions.wrap("reward-model forward", forward)(*args, **kwargs)

        return capture

    hook_pre = register_optimizer_step_pre_hook(lambda *a: regions.start("Adam step"))
    hook_post = register_optimizer_step_post_hook(lambda *a: regions.stop())
    patches = [
        mock.patch.object(guidance_module, "optimize_logits", optimize_logits),
        mock.patch.object(pipe.model, "forward", model_forward),
        mock.patch.object(torch.autograd, "backward", regions.wrap("backward", torch.autograd.backward)),
        mock.patch.object(torch.autograd, "grad", regions.wrap("backward", torch.autograd.grad)),
        mock.patch.object(pipe.scheduler, "step", regions.wrap("scheduler: rest", pipe.scheduler.step)),
        mock.patch.object(
            pipe.scheduler, "_confidence", regions.wrap("scheduler: confidence", pipe.scheduler._confidence)
        ),
        *[mock.patch.object(t.adapter, "forward", adapter_forward(t, t.adapter.forward)) for t in terms],
    ]
    for owner, name, label in (
        (RewardGuidance, "callback_fn", "guidance: callback rest (logits gather/scatter)"),
        (RewardGuidance, "response_embeddings", "guidance: soft embeddings (forward)"),
        (RewardGuidance, "guided_reward", "guidance: guided_reward rest"),
        (RewardGuidance, "score_texts", "final scoring"),
        (RewardTerm, "reward", "guidance: reward input assembly"),
        (entrgi_module, "method_weight", "guidance: entropy weight"),
        (entrgi_module, "_guidance_step", "guidance: tempered softmax and top-p CDF"),
        (entrgi_module, "_invert_cdf", "guidance: sampling"),
        (entrgi_module, "sample_tokens", "guidance: sampling"),
        (scheduler_module, "sample_tokens", "scheduler: sampling"),
        (scheduler_module, "_nucleus", "top-p nucleus (guidance and scheduler)"),
        (scheduler_module, "_nucleus_position", "top-p nucleus (guidance and scheduler)"),
    ):
        if compiled and name.startswith("_nucleus"):
            continue  # inside the compiled step: a Python timer there would break its graph
        if hasattr(owner, name):  # regions of code that others may rename are optional
            patches.append(mock.patch.object(owner, name, regions.wrap(label, getattr(owner, name))))
    try:
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            synchronize(device)
            regions.start("pipeline rest (encode, slicing, decode, Python)")
            start = cpu_clock()
            pipe(**call, callback_on_step_end=guidance)
            regions.stop()
            synchronize(device)
            seconds = cpu_clock() - start
    finally:
        hook_pre.remove()
        hook_post.remove()
    return seconds, regions.exclusive(), masked_rows, captured


def floor_terms(pipe, captured, masked_rows: int, device: torch.device) -> dict[str, callable]:
    """The four floor terms as closures over inputs of the call's shapes."""
    (args, kwargs) = captured["dllm"]
    model = pipe.model
    P = masked_rows

    def dllm_forward():
        with torch.no_grad():
            model(*args, **kwargs)

    reward_inputs = [
        (term, {**kw, "inputs_embeds": kw["inputs_embeds"].clone().requires_grad_(True)})
        for term, kw in captured["rewards"]
    ]

    def with_fresh_cache(term, kw: dict) -> dict:
        # a cached reward prefix (guidance/prefix_cache.py) is extended by every forward: each one gets a fresh copy
        cache = (getattr(term, "_context", None) or {}).get("cache")
        return {**kw, "past_key_values": cache.fresh()} if cache is not None and "past_key_values" in kw else kw

    def reward_forward_backward():
        with torch.enable_grad():
            for term, kw in reward_inputs:
                torch.autograd.grad(term.adapter(**with_fresh_cache(term, kw)).sum(), kw["inputs_embeds"])

    soft_inputs = []
    for term, _ in reward_inputs:
        embed = term.adapter.get_input_embeddings().weight
        V = pipe.vocab_size
        matrix = torch.randn(V, embed.shape[1], device=device, dtype=embed.dtype)
        probs = torch.rand(P, V, device=device).softmax(-1).to(embed.dtype).requires_grad_(True)
        soft_inputs.append((probs, matrix, torch.randn(P, embed.shape[1], device=device, dtype=embed.dtype)))

    def soft_product():
        with torch.enable_grad():
            for probs, matrix, grad in soft_inputs:
                torch.autograd.grad(probs @ matrix, probs, grad)

    logits = torch.randn(P, pipe.vocab_size, device=device).requires_grad_(True)
    grad = torch.randn_like(logits)

    def softmax():
        with torch.enable_grad():
            torch.autograd.grad(logits.softmax(-1), logits, grad)

    return {"F": dllm_forward, "R": reward_forward_backward, "S": soft_product, "X": softmax}


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main(argv: list[str] | None = None) -> dict:
    args = resolve_defaults(build_parser().parse_args(argv))
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.wall:
        global cpu_clock
        cpu_clock = time.perf_counter
    pipe, reward_model, reward_tokenizer, inputs = build_stack(args)
    pipe.scheduler = MaskedDiffusionScheduler.from_config(pipe.scheduler.config, confidence=args.confidence)
    call = dict(
        **inputs,
        num_inference_steps=args.steps,
        gen_length=args.gen_length,
        num_samples_per_prompt=args.num_samples,
        temperature=args.tau,
        top_p=args.top_p,
        block_length=args.block_length,
    )
    guidance = RewardGuidance(
        reward_model,
        reward_tokenizer,
        guidance=args.method,
        guidance_steps=args.guidance_steps,
        guidance_lr=args.eta,
        **({"compile": True} if args.compile else {}),
    )

    def generator():
        return torch.Generator(device).manual_seed(args.seed)

    def guided():
        pipe(**call, callback_on_step_end=guidance, generator=generator())

    nfe = {}

    def guided_threshold():
        out = pipe(**call, threshold=args.threshold, callback_on_step_end=guidance, generator=generator())
        nfe["threshold"] = out.nfe

    def unguided():
        pipe(
            **call, reward_model=reward_model, reward_tokenizer=reward_tokenizer, guidance="none", generator=generator()
        )

    # Warm-up (allocator, kernels, compilation): short calls of both kinds.
    blocks = args.gen_length // args.block_length if args.block_length else 1
    short = {**call, "num_inference_steps": 2 * blocks}
    pipe(**short, callback_on_step_end=guidance, generator=generator())
    pipe(**short, reward_model=reward_model, reward_tokenizer=reward_tokenizer, guidance="none", generator=generator())

    call["generator"] = generator()
    _, regions, masked_rows, captured = instrumented_call(pipe, guidance, call, device, args.compile)
    del call["generator"]
    P = round(sum(masked_rows) / max(len(masked_rows), 1))
    terms = floor_terms(pipe, captured, P, device)
    for fn in terms.values():  # warm-up at these shapes
        fn()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples: dict[str, list[float]] = {name: [] for name in ("guided", "unguided", "threshold", *terms)}
    for _ in range(args.repeats):  # interleaved, so that load changes shift every figure alike
        samples["guided"].append(timed(guided, device))
        if args.threshold is not None:
            samples["threshold"].append(timed(guided_threshold, device))
        samples["unguided"].append(timed(unguided, device))
        for name, fn in terms.items():
            samples[name].append(statistics.median(timed(fn, device) for _ in range(3)))
    median = {name: statistics.median(values) for name, values in samples.items() if values}
    T, Tg, M = args.steps, len(masked_rows), args.guidance_steps
    floor = T * median["F"] + Tg * M * (median["R"] + median["S"] + median["X"])
    per_repeat = [
        g / (T * f + Tg * M * (r + s + x))
        for g, f, r, s, x in zip(*(samples[k] for k in ("guided", "F", "R", "S", "X")))
    ]
    tokens = args.prompts * args.num_samples * args.gen_length
    result = {
        "overhead": median["guided"] / floor,
        "guided_over_unguided": median["guided"] / median["unguided"],
        "tokens_per_s": tokens / median["guided"],
        "peak_mb": peak_mb(device),
        "guided_s": median["guided"],
        "unguided_s": median["unguided"],
        "floor_s": floor,
        "overhead_per_repeat": per_repeat,
        "terms_s": {k: median[k] for k in ("F", "R", "S", "X")},
        "masked_rows_P": P,
        "guided_steps": Tg,
        "shapes": {
            "B": args.prompts,
            "K": args.num_samples,
            "L": args.gen_length,
            "T": T,
            "M": M,
            "V": pipe.vocab_size,
            "prompt_tokens": args.prompt_tokens,
        },
        "models": {"dllm": args.dllm, "reward": args.reward, "dtype": args.dtype},
        "method": args.method,
        "confidence": args.confidence,
        "compile": args.compile,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "clock": "cuda events" if device.type == "cuda" else ("wall" if args.wall else "process cpu time"),
        "load_average": os.getloadavg(),
        "repeats": args.repeats,
    }
    if args.threshold is not None:
        # the same tokens are generated either way: the cost per generated token is the call's time over B*K*L
        result["threshold"] = {
            "threshold": args.threshold,
            "block_length": args.block_length,
            "nfe": nfe["threshold"],
            "fixed_nfe": T,
            "guided_s": median["threshold"],
            "ms_per_token": 1e3 * median["threshold"] / tokens,
            "fixed_ms_per_token": 1e3 * median["guided"] / tokens,
            "speedup": median["guided"] / median["threshold"],
        }
    if not args.no_breakdown:
        total = sum(regions.values())
        result["breakdown_s"] = dict(sorted(regions.items(), key=lambda kv: -kv[1]))
        result["breakdown_total_s"] = total
    print(report(result), file=sys.stderr)
    line = json.dumps(result)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(line + "\n")
    print(line)
    return result


def report(r: dict) -> str:
    s = r["shapes"]
    lines = [
        f"{r['models']['dllm']} dLLM + {r['models']['reward']} reward ({r['models']['dtype']}), {r['method']}, "
        f"B={s['B']} K={s['K']} L={s['L']} T={s['T']} M={s['M']} V={s['V']}, P={r['masked_rows_P']}, "
        f"{r['device']}, {r['threads']} thread(s), {r['clock']}, load {r['load_average'][0]:.2f}",
        f"guided {r['guided_s']:.3f} s   unguided {r['unguided_s']:.3f} s   floor {r['floor_s']:.3f} s",
        f"overhead {r['overhead']:.2f} (per repeat {', '.join(f'{x:.2f}' for x in r['overhead_per_repeat'])})   "
        f"guided/unguided {r['guided_over_unguided']:.2f}   {r['tokens_per_s']:.1f} tokens/s   "
        f"peak {r['peak_mb']:.0f} MB",
        "terms: " + "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in r["terms_s"].items()),
    ]
    if "threshold" in r:
        t = r["threshold"]
        lines.append(
            f"threshold {t['threshold']} (blocks of {t['block_length'] or s['L']}): {t['nfe']} dLLM calls instead "
            f"of {t['fixed_nfe']}, {t['ms_per_token']:.2f} ms per generated token against {t['fixed_ms_per_token']:.2f}"
            f" at fixed steps ({t['speedup']:.2f}x)"
        )
    if "breakdown_s" in r:
        total = r["breakdown_total_s"]
        lines.append(f"instrumented guided call {total:.3f} s:")
        lines += [f"  {v / total:6.1%}  {v:8.3f} s  {k}" for k, v in r["breakdown_s"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
