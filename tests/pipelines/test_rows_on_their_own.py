"""Threshold decoding of full-attention dLLMs with rows that advance on their own (issue 22 item 4): a row whose
block is full moves on without waiting for the batch's slowest row, and a finished row leaves the batch."""

from __future__ import annotations

import pytest
import torch

from entrgi_pipelines import MaskedDiffusionScheduler
from entrgi_pipelines.testing import tiny_reward_model

from .test_fast_dllm_cache import make_pipe

PROMPTS = ["the cat sat", "a man and a woman walked to the old city by the sea", "the sea"]
RUN = dict(gen_length=12, num_inference_steps=12, block_length=4, num_samples_per_prompt=2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["dream", "llada"])
def family(request) -> str:
    return request.param


def run(pipe, prompts, lockstep: bool = False, **settings):
    pipe._lockstep = lockstep
    try:
        return pipe(prompts, **{**RUN, **settings})
    finally:
        pipe._lockstep = False


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_greedy_rows_get_the_tokens_they_get_alone_and_in_lockstep(family, chat_tokenizer, threshold):
    pipe = make_pipe(chat_tokenizer, family, sharp=True)
    settings = dict(temperature=0, threshold=threshold)
    batch = run(pipe, PROMPTS, **settings)
    lockstep = run(pipe, PROMPTS, lockstep=True, **settings)
    assert torch.equal(batch.sequences, lockstep.sequences)
    for b, prompt in enumerate(PROMPTS):
        alone = run(pipe, [prompt], **settings, num_samples_per_prompt=1)
        assert torch.equal(batch.sequences[b, 0], alone.sequences[0, 0]), prompt
        assert batch.row_nfe[b, 0] == alone.nfe  # the row made the calls it makes alone
    # every call runs the rows still decoding: the call count is the slowest row's, never more than lockstep's
    assert batch.nfe == int(batch.row_nfe.max()) <= lockstep.nfe


def test_rows_on_their_own_save_calls_where_lockstep_waits(family, chat_tokenizer):
    """Rows whose blocks fill at different steps: lockstep pays, per block, the slowest row's steps; rows on their
    own pay their own, so the call is the slowest row's total (found on these seeds; asserted as an inequality)."""
    pipe = make_pipe(chat_tokenizer, family, sharp=4.0)
    saved = 0
    for seed in range(4):
        settings = dict(threshold=0.5, temperature=0.7, num_samples_per_prompt=4)
        out = run(pipe, PROMPTS, generator=torch.Generator().manual_seed(seed), **settings)
        lockstep = run(pipe, PROMPTS, lockstep=True, generator=torch.Generator().manual_seed(seed), **settings)
        assert out.nfe == int(out.row_nfe.max())
        assert lockstep.row_nfe is None
        saved += lockstep.nfe - out.nfe
    assert saved > 0


def test_one_row_is_the_lockstep_loop_sampled_and_guided(family, chat_tokenizer):
    """With one row nothing waits: the per-row loop is the lockstep loop, draw for draw, guided or not."""
    pipe = make_pipe(chat_tokenizer, family, sharp=True)
    reward = tiny_reward_model(len(chat_tokenizer))
    for extra in ({}, {"reward_model": reward}, {"reward_model": reward, "guidance_scope": "block"}):
        settings = dict(threshold=0.4, num_samples_per_prompt=1, **extra)
        a = run(pipe, [PROMPTS[1]], generator=torch.Generator().manual_seed(3), **settings)
        b = run(pipe, [PROMPTS[1]], lockstep=True, generator=torch.Generator().manual_seed(3), **settings)
        assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe
        if extra:
            torch.testing.assert_close(a.rewards, b.rewards)


def test_guided_batch_rows_are_guided_as_alone_rows_are(family, chat_tokenizer):
    """Greedy and guided (APS: hard tokens, deterministic at temperature 0): the guidance of a row that waits in
    lockstep or leaves the batch early changes nothing in the other rows."""
    pipe = make_pipe(chat_tokenizer, family, sharp=True)
    reward = tiny_reward_model(len(chat_tokenizer))
    settings = dict(reward_model=reward, guidance="aps", temperature=0, threshold=0.4, num_samples_per_prompt=1)
    batch = run(pipe, PROMPTS, **settings)
    for b, prompt in enumerate(PROMPTS):
        alone = run(pipe, [prompt], **settings)
        assert torch.equal(batch.sequences[b], alone.sequences[0]), prompt
        torch.testing.assert_close(batch.rewards[b], alone.rewards[0])
    assert batch.nfe == int(batch.row_nfe.max())


def test_scheduler_row_steps_follow_each_rows_block_and_schedule():
    scheduler = MaskedDiffusionScheduler(confidence="maskgit_plus", block_length=4, commit_schedule="even")
    scheduler.set_timesteps(4, gen_length=8)  # two blocks, two steps each
    sample = torch.full((2, 8), 9)
    sample[1, :4] = 1  # row 1 is in its second block
    logits = torch.randn(2, 8, 10, generator=torch.Generator().manual_seed(0))
    out = scheduler.step(
        logits, scheduler.timesteps[0], sample, mask_token_id=9, temperature=0, row_steps=torch.tensor([0, 2])
    )
    committed = out.commit_mask
    assert committed[0, :4].sum() == 2 and not committed[0, 4:].any()  # step 0 of block 0: half of 4
    assert committed[1, 4:].sum() == 2 and not committed[1, :4].any()  # step 0 of block 1
    assert scheduler.step_index is None  # the caller moves the rows
    last = scheduler.step(
        logits, scheduler.timesteps[0], out.prev_sample, mask_token_id=9, temperature=0, row_steps=torch.tensor([1, 3])
    )
    # each row's last step commits all that remain of its own block (row 0's second block is still to come)
    assert (last.prev_sample[0, :4] != 9).all() and (last.prev_sample[0, 4:] == 9).all()
    assert (last.prev_sample[1] != 9).all()
