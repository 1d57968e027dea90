"""What the Space needs from `entrgi_pipelines.demo`: stopping between steps, progress by cost, the cost model, and
the narrow (stacked) animation. Tiny models, no server."""

from __future__ import annotations

import pytest
from PIL import Image

from entrgi_pipelines import EntRGiPipeline
from entrgi_pipelines.demo import CostModel, RequestCancelled, compare_methods, denoising_gif
from entrgi_pipelines.runs import sampling_settings
from entrgi_pipelines.stack import EmbeddedStack

from ..conftest import get_dummy_components

TINY = dict(num_samples=2, steps=4, gen_length=6, guidance_steps=1)


@pytest.fixture
def stack(tokenizer, reward_model):
    pipe = EntRGiPipeline(**get_dummy_components(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return EmbeddedStack(pipe, reward_model, tokenizer, reward_model, tokenizer)


def test_a_cancelled_request_stops_after_the_step_it_is_in_and_leaves_the_pipeline_clean(stack):
    steps = []

    def cancelled() -> bool:
        steps.append(len(steps))
        return len(steps) > 2  # the visitor leaves during the third step

    with pytest.raises(RequestCancelled, match="step 3/4"):
        compare_methods(stack, "the cat", "a dog", "entrgi", sampling_settings(**TINY), cancelled=cancelled)
    assert len(steps) == 3 and stack.pipe.sampling_state == {}
    # the next request runs as if nothing had happened
    again = compare_methods(stack, "the cat", "a dog", "entrgi", sampling_settings(**TINY), seed=1)
    fresh = compare_methods(stack, "the cat", "a dog", "entrgi", sampling_settings(**TINY), seed=1)
    assert again[1].texts == fresh[1].texts and again[1].rewards == fresh[1].rewards


def test_progress_grows_with_the_cost_of_each_half(stack):
    calls = []
    compare_methods(
        stack,
        "the cat",
        "a dog",
        "entrgi",
        sampling_settings(**TINY),
        progress=lambda done, what: calls.append((done, what)),
        half_costs=(1.0, 3.0),
    )
    fractions = [done for done, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert fractions[3] == pytest.approx(0.25) and calls[3][1] == "Best-of-N (unguided): step 4/4"
    assert fractions[4] == pytest.approx(0.25 + 0.75 / 4) and calls[4][1] == "EntRGi: step 1/4"


def test_the_cost_model_recovers_the_costs_it_was_fitted_to():
    truth = CostModel(unguided=(0.2, 2e-4), guided=(0.5, 3e-4, 1.5e-3), extra=(0.4, 1e-3))
    requests = []
    for k, length, m, p in [
        (4, 16, 3, 10),
        (4, 24, 3, 12),
        (2, 24, 3, 9),
        (2, 32, 3, 14),
        (4, 24, 2, 11),
        (3, 8, 1, 20),
    ]:
        unguided, guided = truth.halves(k, length, length, m, p)
        extra = truth.extra[0] + truth.extra[1] * length * length
        requests.append(
            dict(
                num_samples=k,
                steps=length,
                gen_length=length,
                guidance_steps=m,
                prompt_tokens=p,
                unguided_s=unguided,
                guided_s=guided,
                extra_s=extra,
            )
        )
    fitted = CostModel.fit(requests)
    for k, length, m, p in [(8, 64, 4, 10), (1, 4, 1, 5)]:  # also outside the fitted shapes
        assert fitted.seconds(k, length, length, m, p) == pytest.approx(truth.seconds(k, length, length, m, p))
    assert fitted.seconds(4, 16, 16, 3, 10, method="none") < fitted.seconds(4, 16, 16, 3, 10)
    faster = CostModel(fitted.unguided, fitted.guided, fitted.extra, speed=0.5)
    assert faster.seconds(4, 16, 16, 3, 10) == pytest.approx(fitted.seconds(4, 16, 16, 3, 10) / 2)
    with pytest.raises(ValueError, match="requests"):
        CostModel.fit([])


def test_the_stacked_animation_is_narrow_and_holds_both_sides(stack, tmp_path):
    sides = compare_methods(stack, "the cat", "a dog", "entrgi", sampling_settings(**TINY))
    wide = denoising_gif(stack, sides, tmp_path / "wide.gif", "the cat", "a dog")
    narrow = denoising_gif(stack, sides, tmp_path / "narrow.gif", "the cat", "a dog", stacked=True)
    with Image.open(wide) as w, Image.open(narrow) as n:
        assert n.width <= 390 < w.width and n.height > w.height
        assert n.n_frames == w.n_frames
