"""`output_trajectory=True`: the per-step response tokens, for denoising animations."""

import pytest
import torch

PROMPTS = ["the cat", "a man and a woman walked to the old city by the sea"]
FAST = dict(gen_length=8, num_inference_steps=5, num_samples_per_prompt=3)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("guidance", ["none", "entrgi"])
def test_trajectory_follows_the_schedule_and_ends_at_the_sequences(pipe, tokenizer, reward_model, guidance):
    out = pipe(
        PROMPTS, reward_model=reward_model, guidance=guidance, generator=seeded(), output_trajectory=True, **FAST
    )
    T, L = FAST["num_inference_steps"], FAST["gen_length"]
    frames = out.trajectory
    assert frames.dtype == torch.long and frames.shape == (T, 2, 3, L)
    assert torch.equal(frames[-1], out.sequences)

    mask = tokenizer.mask_token_id
    committed = frames != mask
    # committed tokens never change, masks only ever turn into tokens
    assert (committed[1:] | ~committed[:-1]).all()
    assert torch.equal(torch.where(committed[:-1], frames[1:], mask), torch.where(committed[:-1], frames[:-1], mask))
    # each frame holds exactly the number of tokens the scheduler schedules, per sample
    masked = torch.full((2, 3), L)
    for step in range(T):
        masked = masked - pipe.scheduler.num_tokens_to_commit(masked, step)
        assert torch.equal(committed[step].sum(-1), L - masked), step
    assert int(masked.sum()) == 0


def test_trajectory_costs_nothing_when_off_and_does_not_change_the_output(pipe, reward_model):
    off = pipe(PROMPTS, reward_model=reward_model, generator=seeded(3), **FAST)
    on = pipe(PROMPTS, reward_model=reward_model, generator=seeded(3), output_trajectory=True, **FAST)
    assert off.trajectory is None
    assert on.texts == off.texts and on.all_texts == off.all_texts
    assert torch.equal(on.sequences, off.sequences) and torch.equal(on.rewards, off.rewards)


def test_tuple_output_grows_only_when_asked(pipe, reward_model):
    plain = pipe(PROMPTS, reward_model=reward_model, generator=seeded(), return_dict=False, **FAST)
    assert len(plain) == 4
    *rest, trajectory = pipe(
        PROMPTS, reward_model=reward_model, generator=seeded(), return_dict=False, output_trajectory=True, **FAST
    )
    assert len(rest) == 4 and torch.equal(trajectory[-1], plain[3])
