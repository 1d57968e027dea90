import pytest
import torch

from entrgi_pipelines import MaskedDiffusionScheduler, MaskedDiffusionSchedulerOutput
from entrgi_pipelines.schedulers.scheduling_masked_diffusion import CONFIDENCE_RULES, filter_logits

MASK, EOS, V = 9, 3, 10


def run_schedule(scheduler, sample, steps, seed=0, logits_fn=None, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    history = []
    for t in scheduler.timesteps:
        logits = logits_fn(sample) if logits_fn else torch.randn(*sample.shape, V, generator=generator)
        out = scheduler.step(logits, t, sample, mask_token_id=MASK, generator=generator, **kwargs)
        history.append(out)
        sample = out.prev_sample
    return sample, history


def test_timesteps_run_from_one_to_eps():
    scheduler = MaskedDiffusionScheduler(eps=1e-3)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.shape == (5,)
    assert scheduler.timesteps[0] == 1.0
    assert torch.allclose(scheduler.sigmas, torch.linspace(1, 1e-3, 6, dtype=torch.float64))
    assert (scheduler.timesteps[1:] < scheduler.timesteps[:-1]).all()


def test_commit_counts_follow_the_schedule_and_finish_at_the_last_step():
    scheduler = MaskedDiffusionScheduler()
    scheduler.set_timesteps(8)
    n = torch.tensor([32, 7, 0])
    k = scheduler.num_tokens_to_commit(n, 0)
    assert torch.equal(k, torch.round(n * (1 - scheduler.sigmas[1] / scheduler.sigmas[0])).long())
    assert torch.equal(scheduler.num_tokens_to_commit(n, 7), n)
    # T = L: one token per step
    scheduler.set_timesteps(16)
    sample, history = run_schedule(scheduler, torch.full((3, 16), MASK), 16)
    assert all(h.commit_mask.sum(-1).eq(1).all() for h in history)
    assert (sample != MASK).all()


@pytest.mark.parametrize("rule", CONFIDENCE_RULES)
def test_every_rule_unmasks_everything_and_keeps_committed_tokens(rule):
    scheduler = MaskedDiffusionScheduler(confidence=rule)
    start = torch.full((4, 12), MASK)
    start[:, :3] = torch.tensor([1, 2, 4])  # already committed tokens never change
    sample, history = run_schedule(scheduler, start, 6)
    assert (sample != MASK).all()
    assert torch.equal(sample[:, :3], start[:, :3])
    committed = torch.zeros_like(start, dtype=torch.bool)
    for h in history:
        assert not (h.commit_mask & committed).any()  # a position is committed once
        committed |= h.commit_mask
    assert committed[:, 3:].all() and not committed[:, :3].any()


def test_entropy_rule_commits_the_most_certain_positions_first():
    scheduler = MaskedDiffusionScheduler(confidence="entropy")
    scheduler.set_timesteps(4)
    logits = torch.zeros(1, 8, V)
    logits[0, 5, 2] = 20.0  # position 5 is nearly certain, the others are uniform
    out = scheduler.step(
        logits,
        scheduler.timesteps[0],
        torch.full((1, 8), MASK),
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.commit_mask[0, 5] and out.prev_sample[0, 5] == 2
    assert out.commit_mask.sum() == 2  # round(8 * (1 - t1/t0))


def test_confidence_logits_decide_the_order_not_the_tokens():
    scheduler = MaskedDiffusionScheduler(confidence="entropy")
    scheduler.set_timesteps(8)
    logits = torch.zeros(1, 8, V)
    logits[0, :, 1] = 30.0  # sampled tokens are all 1
    confidence = torch.zeros(1, 8, V)
    confidence[0, 6, 4] = 30.0  # but position 6 is the most certain under the confidence logits
    out = scheduler.step(
        logits,
        scheduler.timesteps[0],
        torch.full((1, 8), MASK),
        mask_token_id=MASK,
        confidence_logits=confidence,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.commit_mask[0, 6] and out.prev_sample[0, 6] == 1


def test_end_of_sequence_is_committed_last():
    scheduler = MaskedDiffusionScheduler(confidence="maskgit_plus")
    scheduler.set_timesteps(4)
    logits = torch.zeros(2, 8, V)
    logits[:, :4, EOS] = 50.0  # confident EOS at the first half
    logits[:, 4:, 5] = 3.0  # less confident words in the second
    out = scheduler.step(
        logits,
        scheduler.timesteps[0],
        torch.full((2, 8), MASK),
        mask_token_id=MASK,
        eos_token_id=EOS,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.commit_mask[:, 4:].any() and not out.commit_mask[:, :4].any()
    plain = MaskedDiffusionScheduler(confidence="maskgit_plus", eos_last=False)
    plain.set_timesteps(4)
    out = plain.step(
        logits,
        plain.timesteps[0],
        torch.full((2, 8), MASK),
        mask_token_id=MASK,
        eos_token_id=EOS,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.commit_mask[:, :4].any()


def test_anchor_rule_grows_from_committed_tokens():
    scheduler = MaskedDiffusionScheduler(confidence="anchor")
    scheduler.set_timesteps(8)
    sample = torch.full((1, 10), MASK)
    sample[0, 6] = 1
    out = scheduler.step(
        torch.zeros(1, 10, V),
        scheduler.timesteps[0],
        sample,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(0),
    )
    committed = out.commit_mask[0].nonzero().flatten().tolist()
    assert set(committed) <= {0, 5, 7}  # next to the prompt (position -1) or to the committed token


def test_seeded_generator_reproduces_and_batch_rows_are_independent_of_each_other():
    a, _ = run_schedule(MaskedDiffusionScheduler(), torch.full((3, 10), MASK), 5, seed=3)
    b, _ = run_schedule(MaskedDiffusionScheduler(), torch.full((3, 10), MASK), 5, seed=3)
    c, _ = run_schedule(MaskedDiffusionScheduler(), torch.full((3, 10), MASK), 5, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_restrict_the_sampled_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert (~torch.isinf(filter_logits(logits, top_p=0.01))).sum() == 1  # the top token always survives
    scheduler = MaskedDiffusionScheduler()
    sample, _ = run_schedule(
        scheduler,
        torch.full((8, 16), MASK),
        4,
        top_k=1,
        logits_fn=lambda s: torch.arange(V, dtype=torch.float).expand(*s.shape, V),
    )
    assert (sample == V - 2).all()  # the top logit belongs to the mask token, which is never sampled


def test_the_mask_token_is_never_sampled():
    logits_fn = lambda s: torch.zeros(*s.shape, V).index_fill_(-1, torch.tensor([MASK]), 5.0)  # noqa: E731
    sample, _ = run_schedule(MaskedDiffusionScheduler(), torch.full((4, 16), MASK), 4, logits_fn=logits_fn)
    assert (sample != MASK).all()


def test_step_output_and_tuple():
    scheduler = MaskedDiffusionScheduler()
    scheduler.set_timesteps(2)
    sample = torch.full((1, 4), MASK)
    out = scheduler.step(torch.randn(1, 4, V), scheduler.timesteps[0], sample, mask_token_id=MASK)
    assert isinstance(out, MaskedDiffusionSchedulerOutput)
    tup = scheduler.step(
        torch.randn(1, 4, V), scheduler.timesteps[1], out.prev_sample, mask_token_id=MASK, return_dict=False
    )
    assert isinstance(tup, tuple) and len(tup) == 4 and (tup[0] != MASK).all()


def test_config_round_trips(tmp_path):
    scheduler = MaskedDiffusionScheduler(eps=0.01, confidence="topk_margin", eos_last=False)
    scheduler.save_pretrained(tmp_path)
    loaded = MaskedDiffusionScheduler.from_pretrained(tmp_path)
    assert loaded.config.eps == 0.01 and loaded.config.confidence == "topk_margin" and not loaded.config.eos_last
    assert MaskedDiffusionScheduler.from_config(scheduler.config).config == scheduler.config


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="confidence"):
        MaskedDiffusionScheduler(confidence="greedy")
    with pytest.raises(ValueError, match="eps"):
        MaskedDiffusionScheduler(eps=0)
    scheduler = MaskedDiffusionScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.randn(1, 2, V), 1.0, torch.full((1, 2), MASK), mask_token_id=MASK)
    scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match="temperature"):
        scheduler.step(torch.randn(1, 2, V), 1.0, torch.full((1, 2), MASK), mask_token_id=MASK, temperature=-0.5)


def test_top_p_nucleus_is_the_sorted_definition():
    logits = torch.randn(64, 3000, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.5, 0.9, 0.95):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        exact_keep = ~torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        keep = ~torch.isinf(filter_logits(logits, top_p=top_p))
        # the same tokens, but for float rounding of the cumulative sums at the boundary (at most one token a row)
        assert ((keep != exact_keep).sum(-1) <= 1).all() and (keep != exact_keep).float().mean() < 1e-3


def test_sample_tokens_is_sampling_from_the_filtered_logits():
    from entrgi_pipelines.schedulers.scheduling_masked_diffusion import sample_from_logits, sample_tokens

    logits = torch.randn(4000, 50, generator=torch.Generator().manual_seed(0)) * 2
    fused = sample_tokens(logits, top_k=20, top_p=0.8, generator=torch.Generator().manual_seed(1))
    reference = sample_from_logits(filter_logits(logits, top_k=20, top_p=0.8), torch.Generator().manual_seed(1))
    assert (fused == reference).float().mean() > 0.995  # the same draws, up to float rounding at CDF steps
    assert not torch.isinf(filter_logits(logits, top_k=20, top_p=0.8).gather(-1, fused[:, None])).any()
