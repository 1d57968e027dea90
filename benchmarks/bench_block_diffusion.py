"""Times whole pipeline calls of a block-diffusion model with its exact key/value cache off and on, and counts the
dLLM calls threshold decoding saves per row at batch 1, 4 and 16 (issue 22, item 7).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_block_diffusion.py --output runs/block/bench.json
    PYTHONPATH=src python benchmarks/bench_block_diffusion.py --smoke --output /tmp/smoke.json   # seconds
    PYTHONPATH=src python benchmarks/bench_block_diffusion.py --render --output docs/block_diffusion_results.json

**Timing.** One prompt (`--prompt`, one row: B = K = 1), `L` response tokens in blocks of `b`, `T = L / 4` steps
(`--steps-per-token`; one step per block at b = 4, eight at b = 32), unguided (no reward model) and guided
(EntRGi, `M` Adam steps per step, a random BERT reward model with the dLLM's vocabulary), each with
`kv_cache=None` and `kv_cache="auto"`. The dLLM is an [`SDARForCausalLM`] with random weights at SDAR-1.7B's width
(`bench_block_cache.build`: hidden 2048, MLP 6144, 16 query / 8 key-value heads of 128, vocabulary 151936) and
`--layers` layers, float32 on CPU; its logits are scaled by `--sharpen` (a random model's distribution over 151,936
tokens is nearly flat, and a sampled token of a flat distribution can flip with float rounding: scaled, the same
seed must give the same tokens with and without the cache, which is checked). Each call is timed whole
(milliseconds per generated token = call / (B*K*L)); forward hooks time the dLLM forwards inside it by kind
(prefill, block read, commit, uncached), so the floor of the cached call is its dLLM time.

**Threshold.** A tiny SDAR (hidden 64, 2 layers, blocks of 4, the test tokenizer's vocabulary) trained here for
`--train-steps` Adam steps on a repetitive toy text in which six of every eight words follow from the text before and
two are drawn at random from four (so its confidences are high where the text is predictable and low elsewhere, as a
trained model's are; a random model's are flat, and scaled they are arbitrary). Sixteen prompts of 3-20 words, greedy,
`L = --threshold-length` tokens, SDAR's `low_confidence_dynamic` at `--threshold` against fixed steps (one token per
step, SDAR's default); each prompt alone (batch 1), in 4 calls of 4 and in one call of 16, with each cache mode.
The savings are `1 - nfe_row(threshold) / nfe_row(fixed)`, from the pipeline's `row_nfe`.

The JSON (`--output`) is written after every configuration and read back on a rerun: configurations already in it
are skipped (same settings required). It ends with `summary`: the ratios, the token checks and the targets.
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
from bench_block_cache import build
from transformers import BertForSequenceClassification

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.models import SDARConfig, SDARForCausalLM
from entrgi_pipelines.testing import tiny_bert_config, tiny_wordpiece_tokenizer

PROMPT = "the king and the queen walked to the old city by the sea"
ANIMALS, PLACES = ["cat", "dog", "bird", "fish"], ["tree", "house", "road", "land"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output", type=Path, required=True, help="the JSON, written after every configuration")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, seconds (the CI check)")
    parser.add_argument("--layers", type=int, default=1, help="dLLM layers at SDAR-1.7B's width")
    parser.add_argument("--vocab", type=int, default=151_936, help="dLLM (and reward) vocabulary")
    parser.add_argument("-L", "--lengths", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--blocks", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--steps-per-token", type=float, default=0.25, help="T = L * this (at least one per block)")
    parser.add_argument("-M", "--guidance-steps", type=int, default=3)
    parser.add_argument("--sharpen", type=float, default=10.0, help="scale of the timed dLLM's logits")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--threshold", type=float, default=0.9, help="SDAR's default dynamic threshold")
    parser.add_argument("--threshold-length", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--parts", nargs="+", default=["threshold", "timing"], choices=("threshold", "timing"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="print the tables of `--output` in Markdown, run nothing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--embedded",
        default=None,
        help="an embedded block-diffusion dLLM version (v3): its real weights and tokenizer, the LM-judge reward "
        "(SmolLM2, the same tokenizer), the bundled prompts for the threshold part",
    )
    parser.add_argument("--target", default="food and eating", help="the LM-judge's target with --embedded")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    if args.embedded and args.blocks != [4]:
        args.blocks = [4]  # the embedded model's block size: it decodes in the blocks it was trained on
    if args.smoke:  # every code path, tiny: the CI check that the script runs
        args.layers, args.lengths, args.blocks, args.vocab = 1, [8], [4, 8], None
        args.threshold_length, args.train_steps = 8, 20
    return args


# --- timing ----------------------------------------------------------------------------------------------------------


class ForwardClock:
    """Forward hooks that time every dLLM forward of a call, by kind: the prompt's prefill, a block read against the
    cache, a block commit, or an uncached forward over the whole sequence."""

    def __init__(self, model: torch.nn.Module):
        self.ms: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._kind, self._start, self._depth = None, 0.0, 0
        self.reset()
        # the pipeline runs the prefill and the commits on the decoder alone (no logits needed): only the outermost
        # of the two modules' forwards is one dLLM forward
        for module in {model, model.get_decoder()}:
            module.register_forward_pre_hook(self._before, with_kwargs=True)
            module.register_forward_hook(self._after)

    def reset(self) -> None:
        self.ms, self.calls, self._prefilled = {}, {}, False

    def _before(self, module, args, kwargs):
        self._depth += 1
        if self._depth > 1:
            return
        if kwargs.get("past_key_values") is None:
            self._kind = "uncached"
        elif kwargs.get("store_kv"):
            self._kind = "commit" if self._prefilled else "prefill"
            self._prefilled = True
        else:
            self._kind = "read"
            self._prefilled = True  # a prompt shorter than a block has no prefill
        self._start = time.perf_counter()

    def _after(self, module, args, output):
        self._depth -= 1
        if self._depth:
            return
        ms = (time.perf_counter() - self._start) * 1e3
        self.ms[self._kind] = self.ms.get(self._kind, 0.0) + ms
        self.calls[self._kind] = self.calls.get(self._kind, 0) + 1


def sharpen(scale: float):
    def hook(module, args, output):
        output.logits = output.logits * scale
        return output

    return hook


def embedded_pipe(args):
    """The embedded block-diffusion dLLM (`--embedded`), its tokenizer and the LM-judge reward with its tokenizer."""
    from entrgi_pipelines.stack.dllm import load_embedded_dllm
    from entrgi_pipelines.stack.lm_reward import load_lm_judge_reward

    model, tokenizer = load_embedded_dllm(version=args.embedded)
    pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    reward, reward_tokenizer = load_lm_judge_reward()
    return pipe, reward, reward_tokenizer


def timing_pipe(args, tokenizer) -> tuple[EntRGiPipeline, torch.nn.Module, ForwardClock]:
    if args.embedded:
        pipe, reward, reward_tokenizer = embedded_pipe(args)
        args._reward = dict(reward_tokenizer=reward_tokenizer, reward_prompt=args.target)
        return pipe, reward, ForwardClock(pipe.model)
    vocab = args.vocab or len(tokenizer)
    if args.smoke:
        shape = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        model = build(args.layers, vocab, mask_token_id=tokenizer.mask_token_id, **shape)
    else:
        model = build(args.layers, vocab, mask_token_id=tokenizer.mask_token_id)
    model.register_forward_hook(sharpen(args.sharpen))
    clock = ForwardClock(model)
    pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(args.seed)
    reward = BertForSequenceClassification(tiny_bert_config(vocab, num_labels=1, max_position_embeddings=512))
    return pipe, reward.eval(), clock


def timing_config(pipe, reward, clock, args, L: int, b: int, guided: bool, kv_cache: str | None) -> dict:
    pipe.model.config.block_size = b
    T = max(L // b, int(L * args.steps_per_token))
    guidance = dict(reward_model=reward, guidance="entrgi", guidance_steps=args.guidance_steps) if guided else {}
    if guided and args.embedded:
        guidance.update(args._reward)
    clock.reset()
    start = time.perf_counter()
    out = pipe(
        args.prompt,
        gen_length=L,
        num_inference_steps=T,
        num_samples_per_prompt=1,
        kv_cache=kv_cache,
        generator=torch.Generator().manual_seed(args.seed),
        **guidance,
    )
    ms = (time.perf_counter() - start) * 1e3
    dllm_ms = sum(clock.ms.values())
    return {
        "L": L,
        "block": b,
        "T": T,
        "guided": guided,
        "kv_cache": kv_cache,
        "ms": round(ms, 1),
        "ms_per_token": round(ms / L, 2),
        "dllm_ms": round(dllm_ms, 1),
        "dllm_ms_per_token": round(dllm_ms / L, 2),
        "rest_ms_per_token": round((ms - dllm_ms) / L, 2),
        "forward_ms": {kind: round(v, 1) for kind, v in clock.ms.items()},
        "forward_calls": dict(clock.calls),
        "nfe": int(out.nfe),
        "row_nfe": int(out.row_nfe[0, 0]),
        "tokens": out.sequences[0, 0].tolist(),
    }


def timing_key(L: int, b: int, guided: bool, kv_cache: str | None) -> str:
    return f"L{L}-b{b}-{'guided' if guided else 'unguided'}-cache_{kv_cache or 'off'}"


def run_timing(args, tokenizer, result: dict, save) -> None:
    rows = result.setdefault("timing", {})
    configs = [
        (L, b, guided, kv_cache)
        for L in args.lengths
        for b in args.blocks
        for guided in (False, True)
        for kv_cache in (None, "auto")  # off and on next to each other: a busy machine shifts the pair together
        if timing_key(L, b, guided, kv_cache) not in rows
    ]
    if not configs:
        return
    pipe, reward, clock = timing_pipe(args, tokenizer)
    for cache in (None, "auto"):  # first forwards allocate: one short call of each kind before any timing
        timing_config(pipe, reward, clock, args, args.blocks[0], args.blocks[0], True, cache)
    for config in configs:
        key = timing_key(*config)
        row = rows[key] = timing_config(pipe, reward, clock, args, *config)
        print(
            f"{key:32s} {row['ms_per_token']:9.2f} ms/token (dLLM {row['dllm_ms_per_token']:9.2f}) nfe {row['nfe']:4d}",
            file=sys.stderr,
            flush=True,
        )
        save()


# --- threshold -------------------------------------------------------------------------------------------------------


def toy_stream(rng: random.Random, units: int) -> list[str]:
    """`the <animal> sat on the <place> . and` repeated: six words of eight follow from the text, two are drawn
    from four."""
    words = []
    for _ in range(units):
        words += ["the", rng.choice(ANIMALS), "sat", "on", "the", rng.choice(PLACES), "."]
        words += ["and"]
    return words


def toy_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(toy_stream(rng, 3)[rng.randrange(8) :][: rng.randint(3, 20)]) for _ in range(n)]


def toy_batch(tokenizer, rng: random.Random, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids (batch, length), prompt lengths (batch,))`: toy text cut into a prompt of 3-20 words and a response."""
    ids, prompt_lengths = [], []
    for _ in range(batch):
        words = toy_stream(rng, 12)[rng.randrange(8) :]
        cut = rng.randint(3, 20)
        prompt = tokenizer(" ".join(words[:cut]))["input_ids"]
        response = tokenizer(" ".join(words[cut:]), add_special_tokens=False)["input_ids"]
        ids.append((prompt + response)[:length])
        prompt_lengths.append(len(prompt))
    return torch.tensor(ids), torch.tensor(prompt_lengths)


def train_toy_model(tokenizer, steps: int, seed: int, length: int = 64, batch: int = 32) -> SDARForCausalLM:
    """A tiny SDAR trained on the toy text as block diffusion is: per sequence one block after the prompt has a random
    fraction of its response tokens masked (the blocks before it clean, as at decoding) and the loss is on those."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = SDARConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        block_size=4,
        mask_token_id=tokenizer.mask_token_id,
    )
    model = SDARForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    b, mask = config.block_size, tokenizer.mask_token_id
    for _ in range(steps):
        ids, lengths = toy_batch(tokenizer, rng, batch, length)
        positions = torch.arange(length)
        first_block = lengths // b
        chosen = first_block + (torch.rand(batch) * (length // b - first_block)).long()
        in_block = (positions // b == chosen[:, None]) & (positions >= lengths[:, None])
        ratio = torch.rand(batch, 1).clamp(min=0.1)
        masked = in_block & (torch.rand(batch, length) < ratio)
        first = positions[None] == torch.maximum(chosen * b, lengths)[:, None]  # at least one position masked
        masked |= first & ~masked.any(-1, keepdim=True)
        logits = model(torch.where(masked, mask, ids)).logits
        loss = torch.nn.functional.cross_entropy(logits[masked], ids[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


THRESHOLD_RUNS = [
    (mode, batch, kv_cache) for kv_cache in ("auto", None) for mode in ("fixed", "threshold") for batch in (1, 4, 16)
]


def run_threshold(args, tokenizer, result: dict, save) -> None:
    part = result.setdefault("threshold", {})
    runs = part.setdefault("runs", {})
    if len(runs) == len(THRESHOLD_RUNS) // (2 if args.embedded else 1):
        return
    if args.embedded:  # the real model on the bundled prompts
        from entrgi_pipelines.bench import read_prompts

        pipe, tokenizer = embedded_pipe(args)[0], None
        tokenizer = pipe.tokenizer
        prompts = [r["prompt"] for r in read_prompts(None, 16)]
    else:
        model = train_toy_model(tokenizer, args.train_steps, args.seed)
        pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler())
        pipe.set_progress_bar_config(disable=True)
        prompts = toy_prompts(16, args.seed + 1)
    L = args.threshold_length
    part["prompts"] = prompts
    part["prompt_tokens"] = [len(pipe.encode_prompt(p)[0][0]) for p in prompts]
    for mode, batch, kv_cache in THRESHOLD_RUNS:
        key = f"{mode}-batch{batch}-cache_{kv_cache or 'off'}"
        if key in runs or (args.embedded and kv_cache is None):  # a real model: the cached decoder only
            continue
        threshold = args.threshold if mode == "threshold" else None
        row_nfe, calls, tokens = [], [], []
        for i in range(0, len(prompts), batch):
            out = pipe(
                prompts[i : i + batch],
                gen_length=L,
                num_inference_steps=L,  # one token per step: SDAR's default (4 steps per block of 4)
                num_samples_per_prompt=1,
                temperature=0,
                threshold=threshold,
                kv_cache=kv_cache,
            )
            row_nfe += out.row_nfe[:, 0].tolist()
            calls.append(int(out.nfe))
            tokens += out.sequences[:, 0].tolist()
        runs[key] = {
            "mode": mode,
            "threshold": threshold,
            "batch": batch,
            "kv_cache": kv_cache,
            "row_nfe": row_nfe,
            "mean_row_nfe": sum(row_nfe) / len(row_nfe),
            "calls_nfe": calls,
            "tokens": tokens,
        }
        print(f"{key:32s} mean row nfe {runs[key]['mean_row_nfe']:6.2f} calls {calls}", file=sys.stderr)
        save()


# --- summary ---------------------------------------------------------------------------------------------------------


def summarize(result: dict, args) -> dict:
    summary: dict = {"timing": {}, "threshold": {}}
    rows = result.get("timing", {})
    for L in args.lengths:
        for b in args.blocks:
            for guided in (False, True):
                off, on = (rows.get(timing_key(L, b, guided, c)) for c in (None, "auto"))
                if off is None or on is None:
                    continue
                same = off["tokens"] == on["tokens"]
                agree = sum(x == y for x, y in zip(off["tokens"], on["tokens"])) / len(off["tokens"])
                summary["timing"][f"L{L}-b{b}-{'guided' if guided else 'unguided'}"] = {
                    "ms_per_token_off": off["ms_per_token"],
                    "ms_per_token_on": on["ms_per_token"],
                    "off_over_on": round(off["ms"] / on["ms"], 2),
                    "floor_ms_per_token_on": on["dllm_ms_per_token"],
                    "on_over_floor": round(on["ms"] / on["dllm_ms"], 2),
                    "same_tokens": same,
                    "token_agreement": agree,
                }
    target = summary["timing"].get(f"L{min(args.lengths)}-b{min(args.blocks)}-guided")
    if target is not None:
        summary["target_guided_3x"] = {"off_over_on": target["off_over_on"], "met": target["off_over_on"] >= 3}
    summary["all_same_tokens"] = all(v["same_tokens"] for v in summary["timing"].values())

    runs = result.get("threshold", {}).get("runs", {})
    for cache in ("auto", "off"):
        savings = {}
        for batch in (1, 4, 16):
            fixed, dyn = (
                runs.get(f"fixed-batch{batch}-cache_{cache}"),
                runs.get(f"threshold-batch{batch}-cache_{cache}"),
            )
            if fixed and dyn:
                savings[batch] = 1 - dyn["mean_row_nfe"] / fixed["mean_row_nfe"]
        if not savings:
            continue
        entry = {f"savings_batch{k}": round(v, 4) for k, v in savings.items()}
        alone = runs.get(f"threshold-batch1-cache_{cache}")
        for batch in (4, 16):
            run = runs.get(f"threshold-batch{batch}-cache_{cache}")
            if run and alone:
                entry[f"batch{batch}_same_tokens_as_alone"] = run["tokens"] == alone["tokens"]
        if 1 in savings and 16 in savings and savings[1] > 0:
            entry["batch16_over_batch1"] = round(savings[16] / savings[1], 4)
            entry["target_80pct_met"] = savings[16] / savings[1] >= 0.8
        summary["threshold"][f"cache_{cache}"] = entry
    return summary


def render(result: dict) -> str:
    """The JSON's tables in Markdown (docs/results.md)."""
    lines = [
        "| L | block | T | guidance | cache off: ms/token | cache on: ms/token | off / on | floor of the cached call "
        "(its dLLM forwards): ms/token | cached / floor | same tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = result.get("timing", {})
    for name, entry in result["summary"]["timing"].items():
        on = rows[f"{name}-cache_auto"]
        guided = f"EntRGi, M = {result['settings']['M']}" if on["guided"] else "none"
        lines.append(
            f"| {on['L']} | {on['block']} | {on['T']} | {guided} | {entry['ms_per_token_off']:.0f} | "
            f"{entry['ms_per_token_on']:.0f} | **{entry['off_over_on']:.1f}x** | "
            f"{entry['floor_ms_per_token_on']:.0f} | {entry['on_over_floor']:.2f}x | "
            f"{'yes' if entry['same_tokens'] else 'NO'} |"
        )
    lines += [
        "",
        "| cached call | forwards (prefill + reads + commits) | ms per forward: read | commit |",
        "|---|---|---|---|",
    ]
    for key, row in rows.items():
        if row["kv_cache"] is None:
            continue
        calls, ms = row["forward_calls"], row["forward_ms"]
        counts = " + ".join(str(calls.get(k, 0)) for k in ("prefill", "read", "commit"))
        lines.append(
            f"| {key.removesuffix('-cache_auto')} | {counts} = {row['nfe']} | {ms['read'] / calls['read']:.0f} | "
            f"{ms['commit'] / calls['commit']:.0f} |"
        )
    runs = result.get("threshold", {}).get("runs", {})
    if runs:
        lines += [
            "",
            "| cache | batch | nfe per row: fixed | threshold | call savings | of batch 1's | "
            "dLLM calls per call: fixed | threshold |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cache in ("auto", "off"):
            summary = result["summary"]["threshold"].get(f"cache_{cache}", {})
            for batch in (1, 4, 16):
                fixed, dyn = (
                    runs.get(f"fixed-batch{batch}-cache_{cache}"),
                    runs.get(f"threshold-batch{batch}-cache_{cache}"),
                )
                if not (fixed and dyn):
                    continue
                savings = summary[f"savings_batch{batch}"]
                share = savings / summary["savings_batch1"] if summary.get("savings_batch1") else float("nan")
                calls = [sum(r["calls_nfe"]) / len(r["calls_nfe"]) for r in (fixed, dyn)]
                lines.append(
                    f"| {cache} | {batch} | {fixed['mean_row_nfe']:.2f} | {dyn['mean_row_nfe']:.2f} | "
                    f"{100 * savings:.1f}% | {100 * share:.0f}% | {calls[0]:.1f} | {calls[1]:.1f} |"
                )
    return "\n".join(lines)


def settings(args) -> dict:
    shared = {
        "prompt": args.prompt,
        "B": 1,
        "K": 1,
        "lengths": args.lengths,
        "blocks": args.blocks,
        "steps_per_token": args.steps_per_token,
        "M": args.guidance_steps,
        "guidance": "entrgi",
        "temperature": 0.7,
        "top_p": 0.95,
        "threshold": args.threshold,
        "threshold_length": args.threshold_length,
        "threads": args.threads,
        "seed": args.seed,
    }
    if args.embedded:
        from entrgi_pipelines.stack.dllm import delta_file, file_digest

        return {
            **shared,
            "embedded": args.embedded,
            "dllm": {"version": args.embedded, "adapter_sha256": file_digest(delta_file(args.embedded))},
            "reward": {"class": "CausalLMReward (SmolLM2-135M-Instruct, the LM-judge)", "target": args.target},
            "threshold_prompts": "the first 16 bundled prompts",
        }
    return {
        **shared,
        "smoke": args.smoke,
        "dllm": {
            "class": "SDARForCausalLM",
            "width": "SDAR-1.7B (hidden 2048, MLP 6144, 16 q / 8 kv heads, head_dim 128)" if not args.smoke else "tiny",
            "layers": args.layers,
            "vocab": args.vocab,
            "weights": "random (seed 0)",
            "dtype": "float32",
            "logits_scale": args.sharpen,
        },
        "reward": {
            "class": "BertForSequenceClassification",
            "shape": "hidden 32, 2 layers, 2 heads, MLP 64, 512 positions, random (seed 0)",
            "vocab": args.vocab,
        },
        "prompt_tokens": len(tiny_wordpiece_tokenizer()(args.prompt)["input_ids"]),
        "train_steps": args.train_steps,
    }


def main(argv: list[str] | None = None) -> dict:
    args = resolve(build_parser().parse_args(argv))
    if args.render:
        print(render(json.loads(args.output.read_text())))
        return {}
    torch.set_num_threads(args.threads)
    tokenizer = tiny_wordpiece_tokenizer()
    result = json.loads(args.output.read_text()) if args.output.exists() else {}
    if result and result.get("settings") != settings(args):
        raise ValueError(f"{args.output} holds a run with other settings: pass another `--output` or delete it.")
    result["settings"] = settings(args)
    result.setdefault("machine", {"platform": platform.platform(), "torch": torch.__version__})
    result.setdefault("commands", []).append(" ".join(sys.argv))  # one per run: a resumed run adds its own
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["summary"] = summarize(result, args)
        tmp = args.output.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.output)

    if "threshold" in args.parts:
        run_threshold(args, tokenizer, result, save)
    if "timing" in args.parts:
        run_timing(args, tokenizer, result, save)
    save()
    print(json.dumps(result["summary"]))
    if not result["summary"]["all_same_tokens"]:
        raise SystemExit("cache on and off gave different tokens: see summary.timing")
    return result


if __name__ == "__main__":
    main()
