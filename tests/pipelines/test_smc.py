"""Sequential Monte Carlo over the K samples of a prompt (`resample="smc"`): the resampling arithmetic, the pipeline's
use of it with every guidance method and decoding option, its outputs, invariants and bad inputs."""

import logging
import math

import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance.resampling import ParticleResampler, effective_sample_size, systematic_resample
from entrgi_pipelines.testing import tiny_masked_lm

from ..guidance.test_rewards import WholeWordsOnly

PROMPTS = ["the cat", "a man and a woman walked to the old city by the sea"]
K = 4
FAST = dict(gen_length=8, num_inference_steps=8, num_samples_per_prompt=K, guidance_steps=2)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _sharpen(module, args, output):
    output.logits = output.logits * 100.0
    return output


def make_pipe(tokenizer, sharp=False, **scheduler):
    """A tiny random dLLM; `sharp` scales its logits so that it is confident, as a trained model is."""
    model = tiny_masked_lm(len(tokenizer))
    if sharp:
        model.register_forward_hook(_sharpen)
    pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler(**scheduler))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


class RowReward(torch.nn.Module):
    """A reward model under test's control: the tiny reward model's reward, plus `bonus` for the sample `favourite`
    of every prompt (rows `k` with `k % K == favourite`), NaN for the samples in `nan_samples` of the prompts in
    `nan_prompts` (all prompts by default). The pipeline scores the B * K samples in row order."""

    def __init__(self, base, favourite=None, bonus=100.0, nan_samples=(), nan_prompts=None):
        super().__init__()
        self.base, self.favourite, self.bonus = base, favourite, bonus
        self.nan_samples, self.nan_prompts = list(nan_samples), nan_prompts

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def forward(self, inputs_embeds, attention_mask):
        reward = self.base(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits[:, 0]
        rows = torch.arange(reward.shape[0])
        sample, prompt = rows % K, rows // K
        if self.favourite is not None:
            reward = reward + self.bonus * (sample == self.favourite)
        nan = torch.isin(sample, torch.tensor(self.nan_samples, dtype=torch.long))
        if self.nan_prompts is not None:
            nan &= torch.isin(prompt, torch.tensor(self.nan_prompts))
        return reward.masked_fill(nan, float("nan"))


# The resampling arithmetic


def test_systematic_resampling_draws_each_sample_floor_or_ceil_of_k_times_its_weight_and_k_w_on_average():
    weights = torch.tensor([[0.1, 0.6, 0.0, 0.3], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 5.0, 0.0], [0.05, 0.05, 0.45, 0.45]])
    normalised = weights / weights.sum(-1, keepdim=True)
    grid = torch.linspace(0, 1, 1001)[:-1]  # u on a fine grid of [0, 1)
    counts = torch.zeros(len(grid), *weights.shape)
    for j, u in enumerate(grid):
        index = systematic_resample(weights, u.expand(len(weights)))
        assert (index.diff(dim=-1) >= 0).all()  # in increasing order
        counts[j] = torch.nn.functional.one_hot(index, 4).sum(1)
    expected = 4 * normalised
    assert (counts >= expected.floor() - 1e-9).all() and (counts <= expected.ceil() + 1e-9).all()
    assert (counts[:, weights == 0] == 0).all()  # a sample of weight zero is never drawn
    torch.testing.assert_close(counts.mean(0), expected, atol=2e-3, rtol=0)
    assert (counts[:, 1] == 1).all()  # equal weights: every sample once, whatever u
    assert systematic_resample(weights[1:2], torch.tensor([0.0])).tolist() == [[0, 1, 2, 3]]
    assert systematic_resample(weights[1:2], torch.tensor([1 - 1e-9], dtype=torch.float64)).tolist() == [[0, 1, 2, 3]]


def test_effective_sample_size():
    inf = float("inf")
    log_weights = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [0.0, -inf, -inf, -inf], [-inf] * 4, [0.0, math.log(3), 0, 0]], dtype=torch.float64
    )
    torch.testing.assert_close(
        effective_sample_size(log_weights), torch.tensor([4.0, 1.0, 0.0, 36 / 12], dtype=torch.float64)
    )
    # scale-free: a constant added to every log-weight of a row (a potential common to all samples) changes nothing
    torch.testing.assert_close(effective_sample_size(log_weights[3:] + 700.0), effective_sample_size(log_weights[3:]))


def test_weights_accumulate_between_resamplings_and_restart_from_the_copied_samples():
    resampler = ParticleResampler(1, 4, ess_threshold=0.5, temperature=1.0, generator=seeded())
    first = torch.tensor([0.0, 0.3, 0.0, 0.2])
    assert resampler.check(first, step=2) is None  # ESS ~ 3.97: no resampling
    second = torch.tensor([0.0, 3.0, -1.0, 0.2])
    index = resampler.check(second, step=4)  # weights exp(second - 0): the increments since the start
    torch.testing.assert_close(resampler.ess[1], effective_sample_size(second[None]).float())
    assert resampler.resampled == [[False], [True]] and index is not None
    assert resampler.ancestry.tolist() == [index.tolist()] and set(index.tolist()) <= {1, 3}
    # after resampling, each copy starts from its ancestor's potential: equal potentials weigh equally again
    resampler.check(second[index], step=6)
    assert float(resampler.ess[2, 0]) == pytest.approx(4.0) and resampler.resampled[2] == [False]
    assert resampler.steps == [2, 4, 6]


# The pipeline


@pytest.mark.parametrize("guidance", ["none", "entrgi", "aps", "expectation"])
@pytest.mark.parametrize("potential", ["hard", "guidance"])
def test_with_a_potential_high_for_one_sample_every_sample_descends_from_it(
    tokenizer, reward_model, guidance, potential
):
    if guidance == "none" and potential == "guidance":
        pytest.skip("no Adam step, no guidance potential (refused: see the bad inputs)")
    pipe = make_pipe(tokenizer)
    out = pipe(
        PROMPTS,
        reward_model=RowReward(reward_model, favourite=2),
        reward_tokenizer=tokenizer,
        guidance=guidance,
        generator=seeded(),
        resample="smc",
        resample_every=2,
        potential=potential,
        **FAST,
    )
    assert out.resample_steps == [2, 4, 6, 8]  # every 2 steps; the 8th is the end of the call
    assert out.resampled[0] == [True, True]  # the first check resamples every prompt
    torch.testing.assert_close(out.ess[0], torch.ones(2), atol=1e-3, rtol=0)  # one sample holds all the weight
    assert out.ancestry.tolist() == [[2] * K] * 2
    assert out.sequences.shape == (2, K, 8) and (out.sequences != tokenizer.mask_token_id).all()


@pytest.mark.parametrize("guidance,potential", [("none", "hard"), ("entrgi", "hard"), ("entrgi", "guidance")])
def test_with_a_very_large_temperature_nothing_resamples_and_the_tokens_are_those_without_smc(
    tokenizer, reward_model, guidance, potential
):
    """Weights exp(delta r / 1e9) are all 1 to float precision: the ESS stays K, no prompt resamples, no extra random
    number is drawn, so the samples are exactly those of the same seed without SMC (the same distribution, a
    fortiori)."""
    pipe = make_pipe(tokenizer)
    settings = dict(reward_model=reward_model, guidance=guidance, **FAST)
    plain = pipe(PROMPTS, generator=seeded(1), **settings)
    smc = pipe(
        PROMPTS,
        generator=seeded(1),
        resample="smc",
        resample_every=1,
        resample_temperature=1e9,
        potential=potential,
        **settings,
    )
    assert torch.equal(smc.sequences, plain.sequences) and torch.equal(smc.rewards, plain.rewards)
    assert smc.all_texts == plain.all_texts and smc.texts == plain.texts
    assert smc.resample_steps == list(range(1, 9)) and not any(sum(smc.resampled, []))
    torch.testing.assert_close(smc.ess, torch.full((8, 2), float(K)))
    assert smc.ancestry.tolist() == [list(range(K))] * 2
    # even when asked to resample whenever the weights differ at all, near-equal weights draw every sample once
    always = pipe(PROMPTS, generator=seeded(1), resample="smc", resample_ess=1.0, resample_temperature=1e9, **settings)
    assert always.ancestry.tolist() == [list(range(K))] * 2
    assert plain.resample_steps is None and plain.ancestry is None and plain.ess is None


def test_resampling_draws_from_the_call_generator_reproducibly(tokenizer, reward_model):
    pipe = make_pipe(tokenizer)
    settings = dict(reward_model=reward_model, guidance="entrgi", resample="smc", resample_every=1, **FAST)
    settings |= dict(resample_temperature=0.002, resample_ess=1.0)  # tiny-model rewards differ by ~0.01
    a, b, c = (pipe(PROMPTS, generator=seeded(seed), **settings) for seed in (5, 5, 6))
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.rewards, b.rewards)
    assert torch.equal(a.ancestry, b.ancestry) and torch.equal(a.ess, b.ess) and a.resampled == b.resampled
    assert any(sum(a.resampled, [])), "the settings should make these tiny models resample"
    assert not torch.equal(a.sequences, c.sequences)


@pytest.mark.parametrize("decoding", ["blocks", "threshold"])
def test_resampling_composes_with_blocks_and_threshold_decoding(tokenizer, reward_model, decoding):
    pipe = make_pipe(tokenizer, sharp=True, confidence="maskgit_plus")
    settings = {"blocks": {}, "threshold": {"threshold": 0.9}}[decoding]
    out = pipe(
        PROMPTS,
        reward_model=RowReward(reward_model, favourite=1),
        reward_tokenizer=tokenizer,
        guidance="entrgi",
        generator=seeded(2),
        block_length=4,
        resample="smc",
        resample_every=1,
        output_trajectory=True,
        **settings,
        **FAST,
    )
    if decoding == "threshold":
        assert out.nfe < 8  # blocks ended early
    assert out.resample_steps == list(range(1, out.nfe + 1))  # every step taken, counted as model calls
    assert out.ancestry.tolist() == [[1] * K] * 2 and out.resampled[0] == [True, True]
    assert (out.sequences != tokenizer.mask_token_id).all()
    _assert_each_trajectory_row_is_one_lineage(out.trajectory, out.sequences, tokenizer.mask_token_id)


def _assert_each_trajectory_row_is_one_lineage(trajectory, sequences, mask):
    """Rows are reordered at every resampling, so each row of the trajectory is the history of its final sample's
    ancestors: a committed token never changes along a row, and the last frame is the final sample."""
    for before, after in zip(trajectory[:-1], trajectory[1:]):
        committed = before != mask
        assert torch.equal(after[committed], before[committed])
    assert torch.equal(trajectory[-1], sequences)


def test_the_end_of_the_call_resamples_by_the_reported_reward_and_the_trajectory_follows(tokenizer, reward_model):
    pipe = make_pipe(tokenizer)
    out = pipe(
        PROMPTS,
        reward_model=RowReward(reward_model, favourite=3),
        reward_tokenizer=tokenizer,
        guidance="none",
        generator=seeded(),
        resample="smc",
        resample_every=100,  # no check inside the loop: only the end
        output_trajectory=True,
        **FAST,
    )
    assert out.resample_steps == [8] and out.resampled == [[True, True]]
    assert out.ancestry.tolist() == [[3] * K] * 2
    assert all(len(set(texts)) == 1 for texts in out.all_texts)  # K copies of the favourite's final sample
    assert (out.sequences == out.sequences[:, :1]).all()
    _assert_each_trajectory_row_is_one_lineage(out.trajectory, out.sequences, tokenizer.mask_token_id)


@pytest.mark.parametrize("potential", ["hard", "guidance"])
def test_reported_reward_equals_the_guidance_time_reward_of_the_same_tokens(tokenizer, reward_model, potential):
    """With resampling: the reported rewards belong to the reported samples (rows reordered together), equal the
    reward of their tokens as guidance and the hard potential feed them, and the trace's hard tokens score as their
    texts do."""
    pipe = make_pipe(tokenizer, confidence="maskgit_plus")
    guidance = RewardGuidance(reward_model, tokenizer, guidance="aps", guidance_steps=2, keep_trace=True)
    out = pipe(
        PROMPTS,
        callback_on_step_end=MultiPipelineCallbacks([WholeWordsOnly(tokenizer), guidance]),
        generator=seeded(3),
        resample="smc",
        resample_every=1,
        resample_ess=1.0,
        resample_temperature=0.002,
        potential=potential,
        block_length=4,
        **FAST,
    )
    assert any(sum(out.resampled, []))
    rewards = out.rewards.flatten()
    torch.testing.assert_close(rewards, guidance.score_texts(sum(out.all_texts, [])))
    torch.testing.assert_close(guidance.reward_of_tokens(out.sequences.reshape(-1, 8)), rewards, atol=1e-5, rtol=1e-5)
    best = out.rewards.argmax(-1).tolist()
    assert out.texts == [texts[k] for texts, k in zip(out.all_texts, best)]
    for entry in guidance.trace:
        # what the reward model did not see is a suffix of each row: end-of-sequence hides it alike
        hard = torch.where(entry["visible"], entry["tokens"], tokenizer.eos_token_id)
        torch.testing.assert_close(guidance.reward_of_tokens(hard), entry["reward"], atol=1e-5, rtol=1e-5)


def test_a_nan_potential_is_never_resampled_onto(tokenizer, reward_model):
    pipe = make_pipe(tokenizer)
    out = pipe(
        PROMPTS,
        reward_model=RowReward(reward_model, nan_samples=[1]),
        reward_tokenizer=tokenizer,
        guidance="none",
        generator=seeded(),
        resample="smc",
        resample_every=1,
        resample_ess=1.0,  # any unequal weights resample: here, sample 1's weight zero
        **FAST,
    )
    assert out.resampled[0] == [True, True]
    torch.testing.assert_close(out.ess[0], torch.full((2,), 3.0), atol=0.2, rtol=0)  # three samples of similar weight
    assert 1 not in out.ancestry.flatten().tolist()


def test_all_nan_for_a_prompt_leaves_it_unresampled_with_one_warning_per_call(tokenizer, reward_model, caplog):
    pipe = make_pipe(tokenizer)
    reward = RowReward(reward_model, favourite=0, nan_samples=range(K), nan_prompts=[0])
    with caplog.at_level(logging.WARNING, logger="entrgi_pipelines"):
        out = pipe(
            PROMPTS,
            reward_model=reward,
            reward_tokenizer=tokenizer,
            guidance="none",
            generator=seeded(),
            resample="smc",
            resample_every=1,
            **FAST,
        )
    assert [r[0] for r in out.resampled] == [False] * 8 and out.ancestry[0].tolist() == list(range(K))
    assert (out.ess[:, 0] == 0).all()  # no sample of prompt 0 has a weight
    assert out.resampled[0][1] and out.ancestry[1].tolist() == [0] * K  # the other prompt resamples as usual
    warnings = [r for r in caplog.records if r.name == "entrgi_pipelines.guidance.resampling"]
    assert len(warnings) == 1 and "not resampled" in warnings[0].getMessage()
    assert torch.isnan(out.rewards[0]).all() and out.texts[0] == out.all_texts[0][0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(resample="bootstrap"), "resample"),
        (dict(potential="soft"), "potential"),
        (dict(resample="smc", resample_every=0), "resample_every"),
        (dict(resample="smc", resample_ess=0.0), "resample_ess"),
        (dict(resample="smc", resample_ess=1.5), "resample_ess"),
        (dict(resample="smc", resample_temperature=0.0), "resample_temperature"),
        (dict(resample="smc", resample_temperature=-1.0), "resample_temperature"),
        (dict(resample="smc", resample_temperature=float("inf")), "resample_temperature"),
        (dict(resample="smc", resample_temperature=float("nan")), "resample_temperature"),
        (dict(resample="smc", num_samples_per_prompt=1), "num_samples_per_prompt"),
        (dict(resample="smc", reward_model=None), "reward_model"),
        (dict(resample="smc", guidance="none", potential="guidance"), "potential"),
        (dict(resample="smc", guidance_steps=0, potential="guidance"), "potential"),
    ],
)
def test_bad_resampling_arguments_are_refused_before_any_model_work(tokenizer, reward_model, kwargs, match):
    pipe = make_pipe(tokenizer)
    calls = []
    hooks = [model.register_forward_hook(lambda *args: calls.append(1)) for model in (pipe.model, reward_model)]
    try:
        with pytest.raises(ValueError, match=match):
            pipe("the cat", **(dict(FAST, reward_model=reward_model) | kwargs))
    finally:
        for hook in hooks:
            hook.remove()
    assert not calls


def test_a_reward_guidance_callback_is_a_reward_for_resampling(tokenizer, reward_model):
    pipe = make_pipe(tokenizer)
    guidance = RewardGuidance(RowReward(reward_model, favourite=0), tokenizer, guidance="none")
    out = pipe("the cat", callback_on_step_end=guidance, generator=seeded(), resample="smc", resample_every=3, **FAST)
    assert out.resample_steps == [3, 6, 8] and out.ancestry.tolist() == [[0] * K]
    with pytest.raises(ValueError, match="potential"):
        pipe("the cat", callback_on_step_end=guidance, resample="smc", potential="guidance", **FAST)
