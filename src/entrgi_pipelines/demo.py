"""Unguided vs guided samples of one prompt on the embedded stack: what `entrgi animate` and the Space show.

Both sides sample the same prompt with the same seed; the unguided side (Best-of-N) keeps the sample the reward
ranks first, the guided side steers every denoising step toward the target. Each side records its denoising
trajectory (for [`entrgi_pipelines.animation`]) and the held-out judge's score of every sample.

Example:
    ```py
    >>> from entrgi_pipelines.demo import compare_methods, sampling_settings
    >>> from entrgi_pipelines.stack import load_embedded_stack
    >>> stack = load_embedded_stack()
    >>> settings = sampling_settings(num_samples=2, steps=4, gen_length=4, guidance_steps=1)
    >>> unguided, guided = compare_methods(stack, "and he said unto them", "food and eating", "entrgi", settings)
    >>> unguided.label, guided.label, len(guided.texts), tuple(guided.trajectory.shape)
    ('Best-of-N (unguided)', 'EntRGi', 2, (4, 2, 4))
    ```
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .animation import AnimationPanel, render_frames, save_gif
from .guidance.entrgi import GUIDANCE_METHODS
from .runs import guided_samples, judge_scores, sampling_settings

METHOD_LABELS = {
    "none": "Best-of-N (unguided)",
    "entrgi": "EntRGi",
    "aps": "APS (straight-through)",
    "expectation": "Expectation",
}


@dataclass
class MethodSamples:
    """The K samples of one method for one prompt, with their rewards, judge scores and denoising trajectory.

    Args:
        method (`str`): the `guidance=` value (`"none"` for Best-of-N).
        label (`str`): a human-readable name of the method.
        texts (`list[str]`): the K responses.
        rewards (`list[float]`): the guidance reward of each response (on its discrete tokens).
        judge (`list[float]`): the held-out judge's score of each response.
        trajectory (`torch.LongTensor` of shape `(T, K, L)`): the response tokens after each step, masks included.
    """

    method: str
    label: str
    texts: list[str]
    rewards: list[float]
    judge: list[float]
    trajectory: torch.LongTensor

    @property
    def best(self) -> int:
        """Index of the sample with the highest reward (what the pipeline returns as `texts`)."""
        return max(range(len(self.rewards)), key=self.rewards.__getitem__)


def check_comparison_inputs(prompt: Any, target: Any, method: Any, seed: Any) -> None:
    """Refuses what [`compare_methods`] cannot run, with the argument's name and the fix (no model work)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("`prompt` must be a non-empty text, e.g. 'and he said unto them'.")
    if not isinstance(target, str) or not target.strip():
        raise ValueError("`target` must be a non-empty description of what to steer toward, e.g. 'food and eating'.")
    if method not in GUIDANCE_METHODS:
        raise ValueError(f"`method` must be one of {GUIDANCE_METHODS}, got {method!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}.")


def compare_methods(
    stack: Any,
    prompt: str,
    target: str,
    method: str = "entrgi",
    settings: argparse.Namespace | None = None,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> tuple[MethodSamples, MethodSamples]:
    """Samples `prompt` without guidance and with `method` (same seed), toward the `target` description.

    Args:
        stack ([`entrgi_pipelines.stack.EmbeddedStack`]): the pipeline, reward model and judge.
        prompt (`str`): the text the responses continue.
        target (`str`): what the reward asks the responses to be about.
        method (`str`, defaults to `"entrgi"`): `"entrgi"`, `"aps"`, `"expectation"` or `"none"` (then both sides
            are the same unguided samples, computed once).
        settings (`argparse.Namespace`, *optional*): K, T, L, M, eta, tau, top-p as made by [`sampling_settings`]
            or parsed by `runs.add_sampling_arguments`; defaults to `sampling_settings()`.
        seed (`int`, defaults to 0): the sampling seed of both sides.
        progress (`callable`, *optional*): called as `progress(fraction_done, description)` after every step.

    Returns:
        `(unguided, guided)`: two [`MethodSamples`].
    """
    check_comparison_inputs(prompt, target, method, seed)
    settings = settings or sampling_settings()
    methods = ["none"] if method == "none" else ["none", method]
    sides = []
    for phase, name in enumerate(methods):
        label = METHOD_LABELS[name]

        def report(pipe, step, timestep, callback_kwargs, phase=phase, label=label):
            progress((phase + (step + 1) / settings.steps) / len(methods), f"{label}: step {step + 1}/{settings.steps}")
            return {}

        out = guided_samples(
            stack.pipe,
            stack.reward_model,
            stack.reward_tokenizer,
            prompt,
            target,
            name,
            settings,
            torch.Generator().manual_seed(seed),
            output_trajectory=True,
            callback_on_step_end=report if progress is not None else None,
        )
        texts = out.all_texts[0]
        judged = judge_scores(stack.judge, stack.judge_tokenizer, [target] * len(texts), texts)
        sides.append(MethodSamples(name, label, texts, out.rewards[0].tolist(), judged, out.trajectory[:, 0]))
    return sides[0], sides[-1]


def distinct_sides(sides: tuple[MethodSamples, ...]) -> list[MethodSamples]:
    """`sides` without repeats (method `"none"` returns the unguided side twice)."""
    return [side for i, side in enumerate(sides) if all(side is not other for other in sides[:i])]


def samples_table(sides: tuple[MethodSamples, ...]) -> list[list]:
    """One row per sample, `[method, sample, reward, judge, best, text]`, each side's samples by reward, best first."""
    rows = []
    for side in distinct_sides(sides):
        order = sorted(range(len(side.texts)), key=lambda i: -side.rewards[i])
        for i in order:
            rows.append(
                [side.label, i + 1, round(side.rewards[i], 4), round(side.judge[i], 3), i == side.best, side.texts[i]]
            )
    return rows


SAMPLES_TABLE_HEADERS = ["method", "sample", "reward", "judge", "best", "text"]


def denoising_gif(stack: Any, sides: tuple[MethodSamples, ...], path: str | Path, prompt: str, target: str) -> Path:
    """The denoising of each side's best sample, side by side, as an animated GIF at `path` (see `animation`)."""
    panels = [
        AnimationPanel(
            side.label,
            f"best of {len(side.texts)}: reward {side.rewards[side.best]:+.3f} · judge {side.judge[side.best]:.2f}",
            side.trajectory[:, side.best],
        )
        for side in distinct_sides(sides)
    ]
    pipe = stack.pipe
    frames = render_frames(
        panels,
        pipe.tokenizer,
        pipe.resolve_mask_token_id(),
        prompt=prompt,
        target=target,
        eos_token_id=pipe.eos_token_id,
    )
    return save_gif(frames, path)
