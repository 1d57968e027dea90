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
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

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


class RequestCancelled(Exception):
    """Raised at the end of a denoising step by [`compare_methods`] when its `cancelled()` says the caller left."""


def _non_negative_fit(features: list[list[float]], targets: list[float]) -> list[float]:
    """Least squares of the relative errors (a 1 s request counts as much as a 60 s one) with coefficients >= 0:
    features whose coefficient comes out negative are dropped, in turn."""
    import numpy as np

    x, y = np.asarray(features, dtype=float), np.asarray(targets, dtype=float)
    scale = 1.0 / np.maximum(y, 1e-3)
    x, y = x * scale[:, None], y * scale
    keep = list(range(x.shape[1]))
    while True:
        coefficients = np.linalg.lstsq(x[:, keep], y, rcond=None)[0]
        if (coefficients >= 0).all() or len(keep) == 1:
            full = [0.0] * x.shape[1]
            for i, c in zip(keep, coefficients):
                full[i] = max(float(c), 0.0)
            return full
        keep.pop(int(coefficients.argmin()))


@dataclass
class CostModel:
    """The seconds of one request of the Space (both halves, the judge and the animation) from its settings.

    With K samples, T steps, L new tokens, M Adam steps and a prompt of P tokens, a half costs a constant plus a
    term per token the dLLM reads (`T * K * (P + L)`); the guided half adds a term per token and Adam step
    (`T * K * L * M`, the reward's forward and backward and the vocabulary-sized updates); the judge and the
    animation cost a constant plus a term per drawn token and frame (`T * L`). The coefficients are fitted to
    measured requests ([`CostModel.fit`]); `speed` scales them to the machine at hand (e.g. the ratio of its
    measured seconds to the model's).

    Example:
        ```py
        >>> from entrgi_pipelines.demo import CostModel
        >>> model = CostModel(unguided=(0.1, 1e-4), guided=(0.2, 1e-4, 2e-4), extra=(0.5, 1e-3))
        >>> round(model.seconds(num_samples=4, steps=16, gen_length=16, guidance_steps=3, prompt_tokens=10), 2)
        2.0
        >>> round(model.seconds(4, 16, 16, 3, 10, method="none"), 2)
        0.64
        ```
    """

    unguided: tuple[float, float]
    guided: tuple[float, float, float]
    extra: tuple[float, float]
    speed: float = 1.0

    def halves(
        self,
        num_samples: int,
        steps: int,
        gen_length: int,
        guidance_steps: int,
        prompt_tokens: int,
        method: str = "entrgi",
    ) -> tuple[float, float]:
        """Seconds of the unguided and of the guided half (0 for the guided half of method `"none"`)."""
        read = steps * num_samples * (prompt_tokens + gen_length)
        adam = steps * num_samples * gen_length * guidance_steps
        unguided = self.unguided[0] + self.unguided[1] * read
        guided = 0.0 if method == "none" else self.guided[0] + self.guided[1] * read + self.guided[2] * adam
        return unguided * self.speed, guided * self.speed

    def seconds(
        self,
        num_samples: int,
        steps: int,
        gen_length: int,
        guidance_steps: int,
        prompt_tokens: int,
        method: str = "entrgi",
    ) -> float:
        """Seconds of the whole request: both halves, the judge and the animation."""
        halves = self.halves(num_samples, steps, gen_length, guidance_steps, prompt_tokens, method)
        sides = 1 if method == "none" else 2
        extra = self.extra[0] + self.extra[1] * steps * gen_length
        return sum(halves) + sides * extra / 2 * self.speed

    @classmethod
    def fit(cls, requests: list[dict]) -> CostModel:
        """Fits the coefficients to measured requests: dicts with `num_samples`, `steps`, `gen_length`,
        `guidance_steps`, `prompt_tokens` and the seconds `unguided_s`, `guided_s` and `extra_s` (judge and
        animation of both sides), as `studies/space_defaults.py` records them."""
        if not requests:
            raise ValueError("`requests` must hold at least one measured request.")

        def read(r):
            return r["steps"] * r["num_samples"] * (r["prompt_tokens"] + r["gen_length"])

        unguided = _non_negative_fit([[1.0, read(r)] for r in requests], [r["unguided_s"] for r in requests])
        adam = [r["steps"] * r["num_samples"] * r["gen_length"] * r["guidance_steps"] for r in requests]
        guided = _non_negative_fit(
            [[1.0, read(r), a] for r, a in zip(requests, adam)], [r["guided_s"] for r in requests]
        )
        extra = _non_negative_fit(
            [[1.0, r["steps"] * r["gen_length"]] for r in requests], [r["extra_s"] for r in requests]
        )
        return cls(tuple(unguided), tuple(guided), tuple(extra))


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
    cancelled: Callable[[], bool] | None = None,
    half_costs: tuple[float, float] | None = None,
    **pipeline_kwargs,
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
        cancelled (`callable`, *optional*): asked after every denoising step; when it returns `True` the call stops
            there with [`RequestCancelled`] (the pipeline keeps no per-call state after it).
        half_costs (`tuple[float, float]`, *optional*): the expected cost (e.g. seconds) of the unguided and the
            guided half, so that `fraction_done` grows with the time spent (default: equal halves).
        pipeline_kwargs: passed to the pipeline as they are (e.g. `block_length=`, `threshold=`).

    Returns:
        `(unguided, guided)`: two [`MethodSamples`]. Without a judge (`stack.judge is None`) the judge scores are NaN.
    """
    check_comparison_inputs(prompt, target, method, seed)
    settings = settings or sampling_settings()
    methods = ["none"] if method == "none" else ["none", method]
    costs = list(half_costs or (1.0, 1.0))[: len(methods)]
    starts = [sum(costs[:phase]) / sum(costs) for phase in range(len(methods))]
    sides = []
    for phase, name in enumerate(methods):
        label = METHOD_LABELS[name]

        def report(pipe, step, timestep, callback_kwargs, phase=phase, label=label):
            if cancelled is not None and cancelled():
                raise RequestCancelled(f"{label}: stopped after step {step + 1}/{settings.steps}")
            if progress is not None:
                done = starts[phase] + costs[phase] / sum(costs) * (step + 1) / settings.steps
                progress(min(done, 1.0), f"{label}: step {step + 1}/{settings.steps}")
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
            callback_on_step_end=report if progress is not None or cancelled is not None else None,
            **pipeline_kwargs,
        )
        texts = out.all_texts[0]
        judged = (
            judge_scores(stack.judge, stack.judge_tokenizer, [target] * len(texts), texts)
            if stack.judge is not None
            else [math.nan] * len(texts)
        )
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


def _score_line(side: MethodSamples) -> str:
    best = side.best
    judge = side.judge[best]
    on_topic = "" if math.isnan(judge) else f" · on-topic {judge:.0%}"
    return f"best of {len(side.texts)}: reward {side.rewards[best]:+.3f}{on_topic}"


def denoising_gif(
    stack: Any,
    sides: tuple[MethodSamples, ...],
    path: str | Path,
    prompt: str,
    target: str,
    stacked: bool = False,
) -> Path:
    """The denoising of each side's best sample as an animated GIF at `path` (see `animation`).

    The sides are drawn side by side, or with `stacked=True` one above the other (a narrow picture whose text stays
    legible on a phone screen).
    """
    panels = [
        AnimationPanel(side.label, _score_line(side), side.trajectory[:, side.best]) for side in distinct_sides(sides)
    ]
    pipe = stack.pipe

    def frames_of(panels: list[AnimationPanel], **size) -> list:
        return render_frames(
            panels,
            pipe.tokenizer,
            pipe.resolve_mask_token_id(),
            prompt=prompt,
            target=target,
            eos_token_id=pipe.eos_token_id,
            **size,
        )

    if not stacked:
        return save_gif(frames_of(panels), path)
    # 380 px wide with 18 px text: on a 390 px phone, shown at ~330 px, the text stays ~15 px
    columns = [frames_of([panel], panel_width=340, font_size=18) for panel in panels]
    count = max(len(frames) for frames in columns)
    columns = [frames + frames[-1:] * (count - len(frames)) for frames in columns]  # hold a side that ended early
    width, heights = max(f[0].width for f in columns), [f[0].height for f in columns]
    stacked_frames = []
    for i in range(count):
        frame = Image.new("RGB", (width, sum(heights)), "white")
        for frames, top in zip(columns, [sum(heights[:j]) for j in range(len(heights))]):
            frame.paste(frames[i], (0, top))
        stacked_frames.append(frame)
    return save_gif(stacked_frames, path)
