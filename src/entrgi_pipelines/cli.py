"""`entrgi`: command line of the embedded offline stack.

    entrgi generate "and he said unto them" --target "food and eating"

samples the same prompt without guidance and with EntRGi (same seed) and prints the samples side by side with
their rewards (cosine similarity of MiniLM embeddings of the target and the response; with `--reward lm-judge`,
SmolLM2's mean log-probability of the target description after the response) and the held-out judge's score
(probability that the response is on the target's topic).

    entrgi animate "and he said unto them" --target "food and eating" --output anim.gif

writes the denoising of the unguided and the guided best sample side by side as an animated GIF (masked positions
as grey blocks, tokens appearing as they are committed).

    entrgi export hub-repos --namespace my-name

writes the embedded stack as three Hub repo folders with model cards, `hub-repos/{pipeline,reward,judge}`, ready
for `hf upload my-name/entrgi-embedded-pipeline hub-repos/pipeline .` (see docs/hub.md).
"""

from __future__ import annotations

import itertools
import os
import textwrap

import torch

from .guidance.entrgi import GUIDANCE_METHODS
from .runs import (
    add_resampling_arguments,
    add_reward_argument,
    add_sampling_arguments,
    check_decoding,
    check_resampling,
)
from .stack.dllm import DLLM_VERSIONS
from .validation import StrictArgumentParser, exit_on_bad_input, positive_int


def side_by_side(left: list[str], right: list[str], width: int) -> str:
    lines = []
    for a, b in zip(left, right):
        wrapped_a, wrapped_b = textwrap.wrap(a, width) or [""], textwrap.wrap(b, width) or [""]
        for x, y in itertools.zip_longest(wrapped_a, wrapped_b, fillvalue=""):
            lines.append(f"{x:<{width}} | {y}")
        lines.append(f"{'':-<{width}}-+-{'':-<{width}}")
    return "\n".join(lines)


def generate(args) -> dict:
    from .runs import guided_samples, judge_scores, load_reward, resampling_kwargs
    from .stack import load_embedded_stack
    from .stack.text import readable_text

    if args.threads:
        torch.set_num_threads(args.threads)
    stack = load_embedded_stack(dllm_version=args.dllm)
    stack.pipe.set_progress_bar_config(disable=args.quiet)
    reward_model, reward_tokenizer = (
        (stack.reward_model, stack.reward_tokenizer) if args.reward == "similarity" else load_reward(args.reward)
    )
    results = {}
    for method in ("none", args.method):
        generator = torch.Generator().manual_seed(args.seed)
        smc = resampling_kwargs(args) if method != "none" else {}  # the unguided side stays plain Best-of-N
        out = guided_samples(
            stack.pipe, reward_model, reward_tokenizer, args.prompt, args.target, method, args, generator, **smc
        )
        texts, rewards = out.all_texts[0], out.rewards[0].tolist()
        judged = judge_scores(stack.judge, stack.judge_tokenizer, [args.target] * len(texts), texts)
        order = sorted(range(len(texts)), key=lambda i: -rewards[i])
        results[method] = [(texts[i], rewards[i], judged[i]) for i in order]
    width = args.width
    label = {
        "none": "unguided (Best-of-N order)",
        args.method: f"{args.method} (eta={args.eta}, M={args.guidance_steps})",
    }
    if args.resample != "none":
        label[args.method] += f" + {args.resample} (every {args.resample_every}, {args.potential})"
    print(f"prompt: {args.prompt!r}   target: {args.target!r}")
    print(f"{label['none']:<{width}} | {label[args.method]}")
    print(f"{'':=<{width}}=+={'':=<{width}}")
    cells = {
        m: [f"[reward {r:+.3f} judge {j:.2f}] {args.prompt} {readable_text(t)}" for t, r, j in rows]
        for m, rows in results.items()
    }
    print(side_by_side(cells["none"], cells[args.method], width))
    for m, rows in results.items():
        print(
            f"{m:>12}: Top@1 reward {rows[0][1]:+.4f}   Avg@{len(rows)} {sum(r for _, r, _ in rows) / len(rows):+.4f}"
        )
    return results


def animate(args) -> None:
    """Writes a GIF of the denoising of the unguided and the guided best sample, side by side."""
    from .demo import check_comparison_inputs, compare_methods, denoising_gif
    from .stack import load_embedded_stack
    from .stack.text import readable_text

    check_comparison_inputs(args.prompt, args.target, args.method, args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    stack = load_embedded_stack(dllm_version=args.dllm)
    stack.pipe.set_progress_bar_config(disable=args.quiet)
    sides = compare_methods(stack, args.prompt, args.target, args.method, args, args.seed)
    path = denoising_gif(stack, sides, args.output, args.prompt, args.target)
    for side in sides:
        best = side.best
        text = readable_text(side.texts[best])
        print(f"{side.label}: reward {side.rewards[best]:+.4f} judge {side.judge[best]:.2f}  {text}")
    print(f"wrote {path} ({args.steps} steps, {path.stat().st_size // 1024} KiB)")


def export(args) -> None:
    """Writes the embedded stack as three Hub repo folders (pipeline, reward, judge) with model cards."""
    from .stack.export import embedded_repo_ids, export_embedded_stack

    folders = export_embedded_stack(args.dir, namespace=args.namespace)
    repo_ids = embedded_repo_ids(args.namespace)
    for kind, folder in folders.items():
        print(f"{kind:>8}: {folder}   upload: hf upload {repo_ids[kind]} {folder} .")


def main(argv: list[str] | None = None) -> None:
    parser = StrictArgumentParser(prog="entrgi", description="EntRGi on the embedded offline stack.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="unguided vs guided samples of one prompt, side by side")
    gen.add_argument("prompt")
    gen.add_argument("--target", required=True, help="what the reward asks the response to be about")
    gen.add_argument("--method", default="entrgi", choices=[m for m in GUIDANCE_METHODS if m != "none"])
    add_reward_argument(gen)
    add_sampling_arguments(gen, steps=32, gen_length=32)
    add_resampling_arguments(gen)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dllm", choices=sorted(DLLM_VERSIONS), help="embedded dLLM version (default: the newest)")
    gen.add_argument("--threads", type=positive_int, default=None)
    gen.add_argument("--width", type=positive_int, default=58)
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    anim = sub.add_parser("animate", help="a GIF of the denoising: unguided vs guided best sample, side by side")
    anim.add_argument("prompt")
    anim.add_argument("--target", required=True, help="what the reward asks the response to be about")
    anim.add_argument("--method", default="entrgi", choices=[m for m in GUIDANCE_METHODS if m != "none"])
    anim.add_argument("--output", default="denoising.gif", help="the GIF to write (default denoising.gif)")
    add_sampling_arguments(anim, steps=32, gen_length=32)
    anim.add_argument("--seed", type=int, default=0)
    anim.add_argument("--dllm", choices=sorted(DLLM_VERSIONS), help="embedded dLLM version (default: the newest)")
    anim.add_argument("--threads", type=positive_int, default=None)
    anim.add_argument("--quiet", action="store_true", help="no progress bars")
    exp = sub.add_parser("export", help="write the embedded stack as Hub repo folders: DIR/pipeline, reward, judge")
    exp.add_argument("dir", help="where to write the three repo folders (existing ones are replaced)")
    exp.add_argument(
        "--namespace", default="entrgi", help="the Hub user or organisation the model cards name (default entrgi)"
    )
    args = parser.parse_args(argv)
    for name in ("prompt", "target"):
        if hasattr(args, name) and not getattr(args, name).strip():
            sub.choices[args.command].error(f"the {name} must not be empty")
    if args.command == "export":
        from .stack.export import embedded_repo_ids

        try:
            embedded_repo_ids(args.namespace)  # a namespace that is not a Hub name is refused before any model work
        except ValueError as error:
            exp.error(str(error))
        if os.path.exists(args.dir) and not os.path.isdir(args.dir):
            exp.error(f"{args.dir!r} is a file: DIR must be a folder (it is created when missing)")
        export(args)
        return
    exit_on_bad_input(sub.choices[args.command], check_decoding, args)  # before any model work
    if args.command == "generate":
        exit_on_bad_input(gen, check_resampling, args, [args.method])
    if args.command == "animate":
        if not args.output.lower().endswith(".gif"):
            anim.error(f"--output must name a .gif file, got {args.output!r}")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
            anim.error(f"--output {args.output!r}: its folder does not exist")
        try:
            animate(args)
        except (ValueError, TypeError) as error:  # bad values, refused before any model work
            anim.error(str(error))
        return
    generate(args)  # nothing returned: a console script's return value becomes its exit status


if __name__ == "__main__":
    main()
