"""CUDA checks (bf16 models, float32 logit optimisation). Skipped without a GPU; run by benchmarks/cuda_check.sh."""

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance import reward_guidance
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

    def spy(tokens, masked, probs, hard, weight, *rest):
        seen.append(probs.dtype)
        return original(tokens, masked, probs, hard, weight, *rest)

    guidance.guided_reward = spy
    pipe("the cat", callback_on_step_end=guidance, gen_length=8, num_inference_steps=4, num_samples_per_prompt=2)
    assert seen and all(dtype == torch.float32 for dtype in seen)


@pytest.mark.parametrize("guidance", ["expectation", "aps", "entrgi"])
def test_guidance_loop_makes_no_host_sync(bf16_stack, monkeypatch, guidance):
    """The M Adam steps of every guided step (`optimize_logits`: entropy weight, tempered softmax, top-p sampling, soft
    embeddings, the reward's backward, Adam) run under `set_sync_debug_mode("error")`.

    Allowed to synchronise, and so outside the strict region: the reward model's own forward (transformers' mask
    helpers test `attention_mask.all()` on the host) and, once per denoising step, the `nonzero` that sizes the masked
    rows before the loop.
    """
    pipe, reward_model = bf16_stack
    optimize_logits, forward, strict_calls = reward_guidance.optimize_logits, reward_model.forward, []

    def strict(*args, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            result = optimize_logits(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        strict_calls.append(guidance)
        return result

    def reward_forward(*args, **kwargs):
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode(0)
        try:
            return forward(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(mode)

    monkeypatch.setattr(reward_guidance, "optimize_logits", strict)
    monkeypatch.setattr(reward_model, "forward", reward_forward)
    out = pipe(
        ["the cat", "a man walked to the sea"],
        reward_model=reward_model,
        guidance=guidance,
        gen_length=16,
        num_inference_steps=4,
        num_samples_per_prompt=2,
        top_p=0.9,
        generator=torch.Generator("cuda").manual_seed(0),
    )
    assert len(strict_calls) == 4 and (out.sequences != pipe.tokenizer.mask_token_id).all()


def test_bench_guidance_runs_on_cuda(tmp_path):
    """The CUDA path of benchmarks/bench_guidance.py (CUDA events, bf16, warm-up) at a tiny size."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_guidance.py"
    command = [sys.executable, str(script), "--device", "cuda", "--dllm", "tiny", "--reward", "tiny"]
    command += ["--vocab", "4096", "-L", "16", "-T", "2", "--repeats", "1", "--prompt-tokens", "8"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["overhead"] > 0 and result["peak_mb"] > 0 and result["models"]["dtype"] == "bfloat16"
