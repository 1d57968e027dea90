"""What a guided run needs on the embedded stack, shared by `entrgi` (cli), the demo/Space and `entrgi-bench`.

The sampling settings (K, T, L, M, eta, tau, top-p) as command-line arguments ([`add_sampling_arguments`]) or from
values ([`sampling_settings`]), turned into one pipeline call ([`guided_samples`]); the embedded guidance rewards
by name ([`add_reward_argument`], [`load_reward`]); the held-out judge's scores ([`judge_scores`]).

This module sits above the embedded stack and beneath all three of its users, so none of them borrows from
another (see docs/architecture.md).

Example:
    ```py
    >>> import argparse
    >>> from entrgi_pipelines.runs import add_sampling_arguments, sampling_kwargs, sampling_settings

    >>> parser = argparse.ArgumentParser()
    >>> add_sampling_arguments(parser, steps=16, gen_length=16)
    >>> args = parser.parse_args(["-K", "2", "--tau", "0.5"])
    >>> sampling_kwargs(args)["num_samples_per_prompt"], sampling_kwargs(args)["num_inference_steps"]
    (2, 16)
    >>> vars(args) == vars(sampling_settings(num_samples=2, steps=16, gen_length=16, tau=0.5))
    True
    ```
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from .guidance.resampling import POTENTIALS, RESAMPLE_METHODS, check_resampling_arguments
from .schedulers.scheduling_masked_diffusion import (
    COMMIT_SCHEDULES,
    CONFIDENCE_RULES,
    MaskedDiffusionScheduler,
    check_decoding_arguments,
)
from .validation import model_source, non_negative_float, non_negative_int, positive_float, positive_int, probability


def add_sampling_arguments(parser: argparse.ArgumentParser, steps: int, gen_length: int) -> None:
    """K, T, L, M, eta, tau and top-p, shared by `entrgi-bench`, `entrgi generate`, `entrgi animate` and the studies.

    [`sampling_settings`] makes the same settings from values; a new argument here belongs there too.
    """
    parser.add_argument("-K", "--num-samples", type=positive_int, default=4, help="samples per prompt")
    parser.add_argument("-T", "--steps", type=positive_int, default=steps, help=f"denoising steps (default {steps})")
    parser.add_argument(
        "-L", "--gen-length", type=positive_int, default=gen_length, help=f"response tokens (default {gen_length})"
    )
    parser.add_argument(
        "-M", "--guidance-steps", type=non_negative_int, default=3, help="Adam steps per denoising step"
    )
    parser.add_argument("--eta", type=positive_float, default=0.5, help="guidance learning rate")
    parser.add_argument("--tau", type=non_negative_float, default=0.7, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=probability, default=0.95)
    decoding = parser.add_argument_group("decoding (see docs/decoding.md)")
    decoding.add_argument(
        "--block-length",
        type=positive_int,
        default=None,
        help="decode the response in blocks of this many tokens, left to right (default: one block)",
    )
    decoding.add_argument(
        "--threshold",
        type=probability,
        default=None,
        help="threshold decoding: commit every position at least this confident, in (0, 1] (default: fixed steps)",
    )
    decoding.add_argument(
        "--commit-schedule",
        choices=COMMIT_SCHEDULES,
        default="time",
        help="how many positions each step commits: time (default), even (LLaDA's), time_floor (Dream's)",
    )
    decoding.add_argument(
        "--confidence",
        choices=CONFIDENCE_RULES,
        default="entropy",
        help="which positions go first (default entropy; maskgit_plus is LLaDA's low-confidence remasking)",
    )
    decoding.add_argument(
        "--guidance-scope",
        choices=("block", "response"),
        default=None,
        help="with blocks, what guidance sees: the whole response or the response up to the current block (default: "
        "response for full-attention models, block for block-diffusion ones, which have logits for their block only)",
    )
    decoding.add_argument(
        "--kv-cache",
        choices=("auto", "prefix", "dual", "none"),
        default="auto",
        help="key/value cache: auto (default: the exact cache of block-diffusion models, none for full-attention "
        "ones), prefix / dual (Fast-dLLM's approximate caches for full-attention models), none",
    )


def add_resampling_arguments(parser: argparse.ArgumentParser) -> None:
    """`--resample smc` and its settings (SMC over each prompt's K samples), shared by `entrgi-bench` and `entrgi
    generate`; [`resampling_kwargs`] turns them into pipeline arguments."""
    group = parser.add_argument_group("resampling (SMC over a prompt's K samples, see docs/methods.md)")
    group.add_argument(
        "--resample",
        choices=RESAMPLE_METHODS,
        default="none",
        help="smc: weigh the K samples by the reward's change and resample the low-ESS prompts (default none)",
    )
    group.add_argument(
        "--resample-every", type=positive_int, default=4, help="weigh the samples every N denoising steps (default 4)"
    )
    group.add_argument(
        "--resample-ess",
        type=probability,
        default=0.5,
        help="resample when the effective sample size is below this fraction of K, in (0, 1] (default 0.5)",
    )
    group.add_argument(
        "--resample-temperature",
        type=positive_float,
        default=0.1,
        help="weights exp(reward change / this); lower resamples more greedily (default 0.1)",
    )
    group.add_argument(
        "--potential",
        choices=POTENTIALS,
        default="hard",
        help="hard: reward of the step's denoised estimate (one more reward forward); guidance: the last Adam "
        "step's reward (free, guided methods only) (default hard)",
    )


def resampling_kwargs(args) -> dict:
    """The pipeline arguments of [`add_resampling_arguments`] (none when `args` does not resample)."""
    if getattr(args, "resample", "none") == "none":
        return {}
    return {
        "resample": args.resample,
        "resample_every": args.resample_every,
        "resample_ess": args.resample_ess,
        "resample_temperature": args.resample_temperature,
        "potential": args.potential,
    }


def check_resampling(args, methods: list[str]) -> None:
    """Refuses resampling settings the pipeline would refuse for any of `methods` (a `ValueError` naming the
    argument), before any model work; for `exit_on_bad_input`."""
    kwargs = resampling_kwargs(args)
    if not kwargs:
        return
    check_resampling_arguments(
        kwargs["resample"],
        kwargs["resample_every"],
        kwargs["resample_ess"],
        kwargs["resample_temperature"],
        kwargs["potential"],
        args.num_samples,
    )
    unguided = [m for m in methods if m == "none"] or (["M=0"] if args.guidance_steps == 0 else [])
    if kwargs["potential"] == "guidance" and unguided:
        raise ValueError(
            f"--potential guidance reads the reward of the last Adam step, and {unguided[0]} takes none: use "
            "--potential hard, or leave that method out."
        )


def check_decoding(args) -> None:
    """Refuses decoding settings the pipeline would refuse (a `ValueError` naming the argument), before any model
    work; for `exit_on_bad_input`."""
    check_decoding_arguments(
        block_length=getattr(args, "block_length", None),
        gen_length=args.gen_length,
        num_inference_steps=args.steps,
        threshold=getattr(args, "threshold", None),
        confidence=getattr(args, "confidence", "entropy"),
    )


def _whole_number(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
        raise TypeError(f"`{name}` must be a whole number, got {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {int(value)}.")
    return int(value)


def sampling_settings(
    num_samples: int = 4,
    steps: int = 32,
    gen_length: int = 32,
    guidance_steps: int = 3,
    eta: float = 0.5,
    tau: float = 0.7,
    top_p: float = 0.95,
    block_length: int | None = None,
    threshold: float | None = None,
    commit_schedule: str = "time",
    confidence: str = "entropy",
    guidance_scope: str | None = "response",
    kv_cache: str = "auto",
) -> argparse.Namespace:
    """The settings [`add_sampling_arguments`] parses from a command line, from values (K, T, L, M, eta, ...).

    Whole numbers given as floats (as form widgets send them) are accepted; anything else is refused with the
    argument's name.
    """
    return argparse.Namespace(
        num_samples=_whole_number("num_samples", num_samples, 1),
        steps=_whole_number("steps", steps, 1),
        gen_length=_whole_number("gen_length", gen_length, 1),
        guidance_steps=_whole_number("guidance_steps", guidance_steps, 0),
        eta=eta,
        tau=tau,
        top_p=top_p,
        block_length=None if block_length is None else _whole_number("block_length", block_length, 1),
        threshold=threshold,
        commit_schedule=commit_schedule,
        confidence=confidence,
        guidance_scope=guidance_scope,
        kv_cache=kv_cache,
    )


def sampling_kwargs(args) -> dict:
    """The pipeline arguments of K, T, L, tau, top-p and the decoding settings as [`add_sampling_arguments`] parses
    them (the commit schedule and confidence rule are the scheduler's: see [`decoding_scheduler`])."""
    return {
        "num_inference_steps": args.steps,
        "gen_length": args.gen_length,
        "num_samples_per_prompt": args.num_samples,
        "temperature": args.tau,
        "top_p": args.top_p,
        "block_length": getattr(args, "block_length", None),
        "threshold": getattr(args, "threshold", None),
        "guidance_scope": getattr(args, "guidance_scope", None),
        "kv_cache": None if getattr(args, "kv_cache", "auto") == "none" else getattr(args, "kv_cache", "auto"),
    }


def decoding_scheduler(scheduler: MaskedDiffusionScheduler, args) -> MaskedDiffusionScheduler:
    """`scheduler` with the commit schedule and confidence rule of `args` (itself when they are already its own)."""
    wanted = {
        "commit_schedule": getattr(args, "commit_schedule", "time"),
        "confidence": getattr(args, "confidence", "entropy"),
    }
    if all(scheduler.config[key] == value for key, value in wanted.items()):
        return scheduler
    return MaskedDiffusionScheduler.from_config(scheduler.config, **wanted)


def guided_samples(
    pipe, reward_model, reward_tokenizer, prompts, targets, method: str, args, generator, **pipeline_kwargs
):
    """One pipeline call with the sampling settings of `args` (K, T, L, M, eta, tau, top_p), toward `targets`.

    `pipeline_kwargs` go to the pipeline as they are (e.g. `output_trajectory=True`, `callback_on_step_end=...`).
    The pipeline's scheduler takes the commit schedule and confidence rule of `args`.
    """
    pipe.scheduler = decoding_scheduler(pipe.scheduler, args)
    return pipe(
        prompts,
        reward_model=reward_model,
        reward_tokenizer=reward_tokenizer,
        reward_prompt=targets,
        guidance=method,
        guidance_steps=args.guidance_steps,
        guidance_lr=args.eta,
        generator=generator,
        **sampling_kwargs(args),
        **pipeline_kwargs,
    )


@torch.no_grad()
def judge_scores(judge, tokenizer, targets: list[str], texts: list[str]) -> list[float]:
    """The judge's score of each `(target, text)` pair: the first logit of a pair classifier such as the stack's
    (computed on the judge's device)."""
    enc = tokenizer(targets, texts, return_tensors="pt", padding=True)
    if getattr(judge, "device", None) is not None:
        enc = enc.to(judge.device)
    return judge(**enc).logits[:, 0].float().tolist()


REWARDS = ("similarity", "lm-judge")


def add_reward_argument(parser: argparse.ArgumentParser) -> None:
    """`--reward similarity|lm-judge`: the embedded stack's guidance reward, shared by `entrgi-bench` and `entrgi`."""
    parser.add_argument(
        "--reward",
        choices=REWARDS,
        default="similarity",
        help="embedded guidance reward: MiniLM cosine similarity to the target (default), or lm-judge: SmolLM2's "
        "log-probability of the target description after the response (stack/lm_reward.py)",
    )


def load_reward(name: str):
    """`(reward_model, reward_tokenizer)` of an embedded guidance reward named as `--reward` names it."""
    if name == "lm-judge":
        from .stack.lm_reward import load_lm_judge_reward

        return load_lm_judge_reward()
    if name == "similarity":
        from .stack.reward_models import load_similarity_reward_model

        return load_similarity_reward_model()
    raise ValueError(f"--reward must be one of {REWARDS}, got {name!r}.")


def dllm_choice(text: str) -> str:
    """argparse type: an embedded dLLM version (`v1`, `v2`), a model folder written by `save_pretrained`, or a Hub
    repo id (`org/name`, see [`model_source`])."""
    from .stack.dllm import DLLM_VERSIONS

    return text if text in DLLM_VERSIONS else model_source(text)


__all__ = [
    "REWARDS",
    "add_resampling_arguments",
    "add_reward_argument",
    "add_sampling_arguments",
    "check_decoding",
    "check_resampling",
    "decoding_scheduler",
    "dllm_choice",
    "guided_samples",
    "judge_scores",
    "load_reward",
    "resampling_kwargs",
    "sampling_kwargs",
    "sampling_settings",
]
