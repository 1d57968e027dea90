"""`entrgi_pipelines.demo`: unguided vs guided samples of one prompt (what `entrgi animate` and the Space show)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from entrgi_pipelines import EntRGiPipeline
from entrgi_pipelines.demo import (
    SAMPLES_TABLE_HEADERS,
    check_comparison_inputs,
    compare_methods,
    denoising_gif,
    samples_table,
    sampling_settings,
)
from entrgi_pipelines.stack import EmbeddedStack

from .conftest import get_dummy_components

TINY = dict(num_samples=3, steps=4, gen_length=6, guidance_steps=1)


@pytest.fixture
def stack(tokenizer, reward_model):
    pipe = EntRGiPipeline(**get_dummy_components(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    # the tiny reward model doubles as the judge: any one-label pair classifier will do
    return EmbeddedStack(pipe, reward_model, tokenizer, reward_model, tokenizer)


def test_both_sides_share_the_seed_and_record_their_denoising(stack, tokenizer):
    calls = []
    unguided, guided = compare_methods(
        stack, "the cat", "a dog", "entrgi", sampling_settings(**TINY), seed=3, progress=lambda *a: calls.append(a)
    )
    assert (unguided.method, guided.method) == ("none", "entrgi")
    for side in (unguided, guided):
        assert len(side.texts) == len(side.rewards) == len(side.judge) == 3
        assert side.trajectory.shape == (4, 3, 6)
        assert (side.trajectory[0] == tokenizer.mask_token_id).any() and (
            side.trajectory[-1] != tokenizer.mask_token_id
        ).all()
        assert side.rewards[side.best] == max(side.rewards)
    # the unguided side is the pipeline's Best-of-N for the same seed
    again = stack.pipe(
        "the cat",
        reward_model=stack.reward_model,
        reward_prompt="a dog",
        guidance="none",
        num_inference_steps=4,
        gen_length=6,
        num_samples_per_prompt=3,
        generator=torch.Generator().manual_seed(3),
    )
    assert again.all_texts[0] == unguided.texts and again.texts[0] == unguided.texts[unguided.best]
    fractions = [fraction for fraction, _ in calls]
    assert len(calls) == 8 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert calls[0][1].startswith("Best-of-N") and calls[-1][1] == "EntRGi: step 4/4"


def test_method_none_samples_once_and_shows_one_side(stack, tmp_path):
    unguided, guided = compare_methods(stack, "the cat", "a dog", "none", sampling_settings(**TINY))
    assert unguided is guided
    rows = samples_table((unguided, guided))
    assert len(rows) == 3 and len(rows[0]) == len(SAMPLES_TABLE_HEADERS)
    two_sided = compare_methods(stack, "the cat", "a dog", "aps", sampling_settings(**TINY))
    with Image.open(denoising_gif(stack, (unguided, guided), tmp_path / "one.gif", "the cat", "a dog")) as one:
        with Image.open(denoising_gif(stack, two_sided, tmp_path / "two.gif", "the cat", "a dog")) as two:
            assert two.width > one.width and one.n_frames >= 3


def test_samples_table_lists_each_side_best_first(stack):
    sides = compare_methods(stack, "the cat", "a dog", "entrgi", sampling_settings(**TINY))
    rows = samples_table(sides)
    assert [row[0] for row in rows] == ["Best-of-N (unguided)"] * 3 + ["EntRGi"] * 3
    for side, block in zip(sides, (rows[:3], rows[3:])):
        assert [row[2] for row in block] == sorted((row[2] for row in block), reverse=True)
        assert block[0][4] and not any(row[4] for row in block[1:])
        assert block[0][5] == side.texts[side.best] and {row[5] for row in block} == set(side.texts)


def test_settings_take_whole_numbers_from_forms():
    settings = sampling_settings(num_samples=2.0, steps=8, gen_length=16.0, guidance_steps=0)
    assert (settings.num_samples, settings.steps, settings.gen_length, settings.guidance_steps) == (2, 8, 16, 0)
    assert isinstance(settings.num_samples, int)
    with pytest.raises(TypeError, match="num_samples"):
        sampling_settings(num_samples=2.5)
    with pytest.raises(TypeError, match="steps"):
        sampling_settings(steps="8")
    with pytest.raises(ValueError, match="gen_length"):
        sampling_settings(gen_length=0)


@pytest.mark.parametrize(
    "prompt, target, method, seed, name",
    [
        ("", "food", "entrgi", 0, "prompt"),
        ("hi", "  ", "entrgi", 0, "target"),
        ("hi", "food", "best-of-n", 0, "method"),
        ("hi", "food", "entrgi", -1, "seed"),
        ("hi", "food", "entrgi", 1.5, "seed"),
    ],
)
def test_bad_requests_are_refused_with_the_argument_name(prompt, target, method, seed, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        check_comparison_inputs(prompt, target, method, seed)
    with pytest.raises(ValueError, match=f"`{name}`"):
        compare_methods(None, prompt, target, method, seed=seed)  # refused before the stack is touched
