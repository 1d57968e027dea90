"""Non-finite values never crash a generation: NaN/inf rewards and gradients fall back, NaN logits stop the call."""

import logging
import math

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance.entrgi import optimize_logits
from entrgi_pipelines.guidance.rewards import SequenceClassifierReward
from entrgi_pipelines.schedulers.scheduling_masked_diffusion import filter_logits, sample_from_logits, sample_tokens

from .conftest import get_dummy_components

CALL = dict(gen_length=6, num_inference_steps=3, num_samples_per_prompt=2)
GUIDANCE_LOGGER = "entrgi_pipelines.guidance.reward_guidance"


pytestmark = pytest.mark.usefixtures("one_thread")


class ScriptedReward(torch.nn.Module):
    """A reward model whose reward is multiplied, at chosen forward calls, by a per-row factor (NaN, inf or 0)."""

    def __init__(self, reward_model, factors: dict[int, list[float]] | None = None, always: float | None = None):
        super().__init__()
        self.inner = SequenceClassifierReward(reward_model)
        self.factors, self.always, self.calls = factors or {}, always, 0

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, inputs_embeds, attention_mask):
        reward = self.inner(inputs_embeds, attention_mask)
        self.calls += 1
        if self.always is not None:
            return reward * self.always
        if self.calls in self.factors:
            factor = torch.tensor(self.factors[self.calls], dtype=reward.dtype)
            return reward * factor
        return reward


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN gradient for the rows in `bad`."""

    @staticmethod
    def forward(ctx, x, bad):
        ctx.bad = bad
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.masked_fill(ctx.bad[:, None], float("nan")), None


def sequence_reward(target: torch.Tensor, groups: torch.LongTensor, num_sequences: int):
    """A reward per sequence: the summed probability of a target token at each of its rows."""

    def reward(probs, hard, weight):
        per_row = probs[torch.arange(len(target)), target]
        return torch.zeros(num_sequences).index_add(0, groups, per_row)

    return reward


def test_optimize_logits_leaves_rows_of_a_nan_reward_sequence_unguided_and_guides_the_others():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    target = torch.randint(0, 50, (6,))
    base = sequence_reward(target, groups, 3)
    calls = []

    def reward(probs, hard, weight):
        calls.append(1)
        value = base(probs, hard, weight)
        return value * torch.tensor([1.0, float("nan") if len(calls) == 2 else 1.0, 1.0])

    out, fallback = optimize_logits(
        logits, reward, num_steps=3, lr=0.5, top_p=0.9, row_groups=groups, return_fallback=True
    )
    assert fallback.tolist() == [False, False, True, True, False, False]
    assert torch.equal(out[2:4], logits[2:4])  # sequence 1: the model's logits exactly
    assert not torch.equal(out[:2], logits[:2]) and not torch.equal(out[4:], logits[4:])
    assert torch.isfinite(out).all()


def test_optimize_logits_nan_gradient_in_one_row_falls_back_its_whole_sequence():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    groups = torch.tensor([0, 0, 1, 1])
    target = torch.randint(0, 30, (4,))
    base = sequence_reward(target, groups, 2)
    bad = torch.tensor([False, False, False, True])

    def reward(probs, hard, weight):
        return base(NaNGradient.apply(probs, bad), hard, weight)  # the reward itself stays finite

    out, fallback = optimize_logits(logits, reward, num_steps=2, row_groups=groups, return_fallback=True)
    assert fallback.tolist() == [False, False, True, True]
    assert torch.equal(out[2:], logits[2:])
    assert not torch.equal(out[:2], logits[:2])


@pytest.mark.parametrize("lr", [float("inf"), 1e300])
def test_optimize_logits_with_an_overflowing_learning_rate_returns_the_logits(lr):
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    groups = torch.tensor([0, 0, 1, 1])
    reward = sequence_reward(torch.randint(0, 30, (4,)), groups, 2)
    out, fallback = optimize_logits(
        logits, reward, num_steps=3, lr=lr, top_p=0.9, row_groups=groups, return_fallback=True
    )
    assert fallback.all()
    assert torch.equal(out, logits)


def test_optimize_logits_without_groups_falls_back_everywhere_on_a_nan_reward():
    logits = torch.randn(4, 30)

    def reward(probs, hard, weight):
        return torch.stack([probs[:2, 0].sum(), probs[2:, 0].sum() * float("nan")])

    out, fallback = optimize_logits(logits, reward, num_steps=2, return_fallback=True)
    assert fallback.all() and torch.equal(out, logits)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_samplers_never_turn_a_non_finite_logit_into_an_out_of_range_index(value):
    logits = torch.randn(5, 4096)
    logits[0] = value  # a whole row
    logits[1, :7] = value  # a few entries
    generator = torch.Generator().manual_seed(0)
    for top_p in (None, 0.9):
        for top_k in (None, 5):
            tokens = sample_tokens(logits, top_k=top_k, top_p=top_p, generator=generator)
            assert tokens.shape == (5,) and bool(((tokens >= 0) & (tokens < 4096)).all())
    tokens = sample_from_logits(filter_logits(logits, top_p=0.5), generator)
    assert bool(((tokens >= 0) & (tokens < 4096)).all())


def test_scheduler_refuses_a_masked_position_without_a_distribution():
    scheduler = MaskedDiffusionScheduler()
    scheduler.set_timesteps(2)
    sample = torch.full((2, 4), 9)
    logits = torch.randn(2, 4, 10)
    logits[1, 2] = float("nan")
    with pytest.raises(
        ValueError, match=r"`model_output` has no valid distribution at 1 masked position\(s\) at step 0"
    ):
        scheduler.step(logits, scheduler.timesteps[0], sample, mask_token_id=9)


def test_a_nan_reward_at_one_guidance_step_finishes_the_call_and_warns_once(pipe, tokenizer, reward_model, caplog):
    # forward calls 1-2 are the Adam steps of denoising step 0; the 3rd is the first Adam step of step 1
    scripted = ScriptedReward(reward_model, {3: [float("nan"), 1.0, 1.0, 1.0]})
    guidance = RewardGuidance(scripted, tokenizer, guidance_steps=2)
    with caplog.at_level(logging.WARNING, logger=GUIDANCE_LOGGER):
        out = pipe(
            ["the cat", "a dog"], callback_on_step_end=guidance, generator=torch.Generator().manual_seed(0), **CALL
        )
    warnings = [r for r in caplog.records if r.name == GUIDANCE_LOGGER]
    assert len(warnings) == 1
    assert "at 1 of 3 guided steps (1 sample rows in all)" in warnings[0].getMessage()
    assert out.sequences.shape == (2, 2, 6)
    assert not (out.sequences == tokenizer.mask_token_id).any()
    assert torch.isfinite(out.rewards).all()


def test_a_reward_that_is_always_nan_samples_exactly_as_a_reward_without_gradient(tokenizer, reward_model, caplog):
    """All rows fall back at every step: the logits are the model's, as with a zero reward (whose Adam step is 0)."""
    outputs = {}
    for name, factor in (("nan", float("nan")), ("zero", 0.0)):
        pipe = EntRGiPipeline(**get_dummy_components(tokenizer))
        pipe.set_progress_bar_config(disable=True)
        guidance = RewardGuidance(ScriptedReward(reward_model, always=factor), tokenizer, guidance_steps=2)
        with caplog.at_level(logging.WARNING, logger=GUIDANCE_LOGGER):
            outputs[name] = pipe(
                "the cat", callback_on_step_end=guidance, generator=torch.Generator().manual_seed(3), **CALL
            )
        fallbacks = [r for r in caplog.records if r.name == GUIDANCE_LOGGER]
        assert len(fallbacks) == (1 if name == "nan" else 0)
        caplog.clear()
    assert torch.equal(outputs["nan"].sequences, outputs["zero"].sequences)
    assert torch.isnan(outputs["nan"].rewards).all()  # the reported reward is what the reward model said


def test_the_best_sample_is_never_one_with_a_nan_reward(pipe, tokenizer, reward_model):
    # the last forward call of the reward model scores the discrete texts: sample 0 gets NaN
    steps = CALL["num_inference_steps"] * 2
    scripted = ScriptedReward(reward_model, {steps + 1: [float("nan"), 1.0]})
    guidance = RewardGuidance(scripted, tokenizer, guidance_steps=2)
    out = pipe("the cat", callback_on_step_end=guidance, generator=torch.Generator().manual_seed(0), **CALL)
    assert math.isnan(out.rewards[0, 0]) and out.texts[0] == out.all_texts[0][1]


class NaNLogitsAt(torch.nn.Module):
    """A diffusion LM whose logits are NaN at one forward call."""

    def __init__(self, model, at: int):
        super().__init__()
        self.model, self.at, self.calls, self.config = model, at, 0, model.config

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        self.calls += 1
        if self.calls == self.at:
            out.logits[0, -1, 5] = float("nan")
        return out


def test_nan_logits_from_the_diffusion_model_stop_the_call_naming_the_step(tokenizer, reward_model):
    components = get_dummy_components(tokenizer)
    reference = EntRGiPipeline(**components)
    reference.set_progress_bar_config(disable=True)
    wrapped = NaNLogitsAt(components["model"], at=2)
    pipe = EntRGiPipeline(model=wrapped, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(FloatingPointError, match="denoising step 1 of 3"):
        pipe("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **CALL)
    # the pipeline is usable afterwards (the wrapper is NaN only at its 2nd call)
    out = pipe("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **CALL)
    expected = reference("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **CALL)
    assert torch.equal(out.sequences, expected.sequences)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(guidance_lr=float("inf")), "guidance_lr"),
        (dict(guidance_lr=float("nan")), "guidance_lr"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(top_p=float("inf")), "top_p"),
    ],
)
def test_pipeline_refuses_non_finite_numbers_up_front(pipe, reward_model, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        pipe("the cat", reward_model=reward_model, **{**CALL, **kwargs})


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(guidance_lr=float("inf")), "guidance_lr"),
        (dict(guidance_lr=float("nan")), "guidance_lr"),
        (dict(reward_weights=[float("nan")]), "reward_weights"),
        (dict(reward_weights=[float("-inf")]), "reward_weights"),
        (dict(cutoff_step_ratio=float("nan")), "cutoff_step_ratio"),
    ],
)
def test_reward_guidance_refuses_non_finite_numbers(reward_model, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        RewardGuidance(reward_model, **kwargs)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -1.0])
def test_scheduler_step_refuses_a_non_finite_temperature(temperature):
    scheduler = MaskedDiffusionScheduler()
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="`temperature`"):
        scheduler.step(
            torch.randn(1, 3, 10),
            scheduler.timesteps[0],
            torch.full((1, 3), 9),
            mask_token_id=9,
            temperature=temperature,
        )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_optimize_logits_makes_no_host_sync_on_cuda():
    torch.manual_seed(0)
    logits = torch.randn(6, 500, device="cuda")
    groups = torch.tensor([0, 0, 1, 1, 2, 2], device="cuda")
    target = torch.randint(0, 500, (6,), device="cuda")

    def reward(probs, hard, weight):
        per_row = probs[torch.arange(6, device="cuda"), target]
        return torch.zeros(3, device="cuda").index_add(0, groups, per_row) * torch.tensor(
            [1.0, float("nan"), 1.0], device="cuda"
        )

    generator = torch.Generator("cuda").manual_seed(0)
    optimize_logits(logits, reward, num_steps=1, top_p=0.9, row_groups=groups, generator=generator)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, fallback = optimize_logits(
            logits, reward, num_steps=3, top_p=0.9, row_groups=groups, generator=generator, return_fallback=True
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert fallback.tolist() == [False, False, True, True, False, False]
    assert torch.equal(out[2:4], logits[2:4])
