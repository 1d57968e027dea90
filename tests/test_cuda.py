"""CUDA checks (bf16 models, float32 logit optimisation). Skipped without a GPU; run by benchmarks/cuda_check.sh."""

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model, tiny_wordpiece_tokenizer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture
def bf16_stack():
    tokenizer = tiny_wordpiece_tokenizer()
    dllm = tiny_masked_lm(len(tokenizer)).to("cuda", torch.bfloat16)
    reward_model = tiny_reward_model(len(tokenizer)).to("cuda", torch.bfloat16)
    pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, reward_model


@pytest.mark.parametrize("guidance", ["none", "expectation", "aps", "entrgi"])
def test_bf16_guided_generation_on_cuda(bf16_stack, guidance):
    pipe, reward_model = bf16_stack
    before = {k: v.clone() for k, v in reward_model.state_dict().items()}
    kwargs = dict(
        reward_model=reward_model, guidance=guidance, gen_length=16, num_inference_steps=8, num_samples_per_prompt=4
    )
    a = pipe(["the cat", "a man walked to the sea"], generator=torch.Generator("cuda").manual_seed(0), **kwargs)
    b = pipe(["the cat", "a man walked to the sea"], generator=torch.Generator("cuda").manual_seed(0), **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    assert (a.sequences != pipe.tokenizer.mask_token_id).all() and torch.isfinite(a.rewards).all()
    assert all(torch.equal(v, before[k]) for k, v in reward_model.state_dict().items())


def test_logits_are_optimised_in_float32(bf16_stack):
    pipe, reward_model = bf16_stack
    seen = []
    guidance = RewardGuidance(reward_model, keep_trace=True)
    original = guidance.guided_reward

    def spy(tokens, masked, probs, hard, weight):
        seen.append(probs.dtype)
        return original(tokens, masked, probs, hard, weight)

    guidance.guided_reward = spy
    pipe("the cat", callback_on_step_end=guidance, gen_length=8, num_inference_steps=4, num_samples_per_prompt=2)
    assert seen and all(dtype == torch.float32 for dtype in seen)
