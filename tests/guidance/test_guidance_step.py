"""The inner guidance step after issue 9's levers: the same ascent as plain Adam on phi, and compiled = eager."""

import logging
import shutil

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance import entrgi
from entrgi_pipelines.guidance.entrgi import entrgi_embeddings, optimize_logits
from entrgi_pipelines.schedulers.scheduling_masked_diffusion import sample_tokens
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model


def setup(seed=0, P=6, V=40, D=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(P, V, generator=g) * 3
    logits[:, 0] = float("-inf")  # a blocked token (the pipeline blocks the mask token this way)
    E, head = torch.randn(V, D, generator=g), torch.randn(D, generator=g)

    def reward(probs, hard, weight):
        return torch.tanh(entrgi_embeddings(probs @ E, E[hard], weight) @ head)

    return logits, reward


def adam_on_phi(logits, reward, steps, lr=0.5, tau=0.7):
    """The ascent as specified (method.md): Adam with lr on phi, probs = softmax(phi / tau); w = 0, so hard tokens do
    not enter the reward's value."""
    phi = logits.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([phi], lr=lr)
    for _ in range(steps):
        probs = (phi / tau).softmax(-1)
        loss = -reward(probs, torch.zeros(len(phi), dtype=torch.long), torch.zeros(len(phi))).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return phi.detach()


def test_adam_on_phi_over_tau_takes_the_steps_of_adam_on_phi():
    logits, reward = setup()
    for steps in (1, 3):
        ours = optimize_logits(logits, reward, method="expectation", num_steps=steps, lr=0.5, temperature=0.7)
        reference = adam_on_phi(logits, reward, steps)
        finite = logits.isfinite()
        assert torch.allclose(ours[finite], reference[finite], atol=1e-5, rtol=1e-5)
        assert torch.equal(ours.isfinite(), finite)  # blocked tokens stay blocked
    assert torch.equal(optimize_logits(logits, reward, num_steps=0), logits)


def test_shared_softmax_samples_as_the_scheduler_does():
    # The hard tokens of a guidance step are drawn from softmax(top_p(phi / tau)), with the scheduler's own sampler.
    logits, _ = setup(1, P=64, V=300)
    seen = []

    def reward(probs, hard, weight):
        seen.append((probs.detach().clone(), hard))
        return probs.sum(-1) * 0

    optimize_logits(logits, reward, num_steps=1, temperature=0.7, top_p=0.8, generator=torch.Generator().manual_seed(5))
    ((probs, hard),) = seen
    assert torch.allclose(probs, (logits / 0.7).softmax(-1), atol=1e-6)
    expected = sample_tokens(logits / 0.7, top_p=0.8, generator=torch.Generator().manual_seed(5))
    assert (hard == expected).float().mean() > 0.95  # equal up to float rounding at CDF boundaries


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs a compiler")
def test_compiled_step_gives_the_eager_guided_logits():
    logits, reward = setup(2)
    for method in ("expectation", "entrgi"):
        kwargs = dict(method=method, num_steps=1, temperature=0.7, top_p=0.9)
        eager = optimize_logits(logits, reward, generator=torch.Generator().manual_seed(3), **kwargs)
        compiled = optimize_logits(logits, reward, generator=torch.Generator().manual_seed(3), compile=True, **kwargs)
        assert not entrgi._COMPILE_FAILED, entrgi._COMPILE_FAILED
        finite = logits.isfinite()
        assert torch.allclose(compiled[finite], eager[finite], atol=1e-4, rtol=1e-4)
        assert torch.equal(compiled.isfinite(), finite)


def test_a_failed_compilation_falls_back_to_eager(monkeypatch, caplog):
    logits, reward = setup(3)

    def broken():
        def step(*args):
            raise RuntimeError("no compiler here")

        return step

    monkeypatch.setattr(entrgi, "_compiled_probs_and_cdf", broken)
    monkeypatch.setattr(entrgi, "_COMPILE_FAILED", [])
    kwargs = dict(method="entrgi", num_steps=2, top_p=0.9)
    with caplog.at_level(logging.WARNING, logger=entrgi.__name__):
        compiled = optimize_logits(logits, reward, generator=torch.Generator().manual_seed(4), compile=True, **kwargs)
    eager = optimize_logits(logits, reward, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(compiled, eager)
    assert entrgi._COMPILE_FAILED and sum("running it eagerly" in r.message for r in caplog.records) == 1


def test_bf16_models_on_cpu_generate_with_float32_guidance(tokenizer):
    # bf16 models (several times faster matrix products on bf16-capable CPUs); the logits, their gradient, Adam and
    # the sampler stay float32: Adam's first step moves every logit by lr * sign(gradient), so bf16 rounding of the
    # many near-zero gradients would move the guided distribution by about a fifth of the guidance itself
    # (docs/performance.md).
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)).to(torch.bfloat16),
        tokenizer=tokenizer,
        scheduler=MaskedDiffusionScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    guidance = RewardGuidance(tiny_reward_model(len(tokenizer)).to(torch.bfloat16))
    seen, original = [], guidance.guided_reward

    def spy(tokens, masked, probs, *rest):
        seen.append(probs.dtype)
        return original(tokens, masked, probs, *rest)

    guidance.guided_reward = spy
    kwargs = dict(callback_on_step_end=guidance, gen_length=8, num_inference_steps=4, num_samples_per_prompt=2)
    a = pipe(["the cat", "a man walked"], generator=torch.Generator().manual_seed(0), **kwargs)
    b = pipe(["the cat", "a man walked"], generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(a.sequences, b.sequences) and torch.isfinite(a.rewards).all()
    assert seen and set(seen) == {torch.float32}


def test_guided_rows_written_in_place_give_the_tokens_of_the_copy(tokenizer, reward_model, monkeypatch):
    # With the pipeline's `masked_positions`, guidance writes its rows into the logits in place and hands the model's
    # rows to the scheduler's ranking; without them it finds the rows itself and writes into a copy. Same tokens.
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(gen_length=12, num_inference_steps=4, num_samples_per_prompt=3, top_p=0.9)
    seen = []
    original = RewardGuidance.callback_fn

    def spy(self, pipeline, step_index, timestep, callback_kwargs):
        out = original(self, pipeline, step_index, timestep, callback_kwargs)
        seen.append("confidence_logits" in out)
        return out

    monkeypatch.setattr(RewardGuidance, "callback_fn", spy)

    def run():
        return pipe(
            ["the cat", "a man walked to the sea"],
            callback_on_step_end=RewardGuidance(reward_model, guidance="entrgi", guidance_steps=3),
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        )

    in_place = run()
    assert seen and all(seen)
    seen.clear()
    monkeypatch.setattr(RewardGuidance, "tensor_inputs", ["logits", "response_tokens"])
    copied = run()
    assert seen and not any(seen)
    assert torch.equal(in_place.sequences, copied.sequences)
    assert torch.allclose(in_place.rewards, copied.rewards)


def test_step_entropy_weight_is_recomputed_from_the_optimised_logits_at_every_adam_step():
    # "step" (the authors' rule): the weight at Adam step k is entropy_weight of phi after k steps, which a run of k
    # steps returns (same seeds, same first k steps); "fixed" keeps the first one throughout.
    logits, base = setup(4, P=6, V=40)
    kwargs = dict(method="entrgi", lr=0.5, temperature=0.7, top_p=0.9)

    def weights_seen(mode, steps):
        seen = []

        def reward(probs, hard, weight):
            seen.append(weight.clone())
            return base(probs, hard, weight)

        out = optimize_logits(
            logits, reward, num_steps=steps, entropy_weight=mode, generator=torch.Generator().manual_seed(7), **kwargs
        )
        return seen, out

    fixed, _ = weights_seen("fixed", 3)
    step, _ = weights_seen("step", 3)
    assert all(torch.equal(w, fixed[0]) for w in fixed)
    assert torch.equal(step[0], fixed[0])  # the first Adam step sees the model's logits either way
    for k in (1, 2):
        _, phi_k = weights_seen("step", k)
        assert torch.allclose(step[k], entrgi.entropy_weight(phi_k), atol=1e-6)
        assert not torch.allclose(step[k], fixed[0], atol=1e-6)  # guidance moved the entropy
    # one Adam step: the same guided logits
    assert torch.equal(weights_seen("step", 1)[1], weights_seen("fixed", 1)[1])


def test_entropy_weight_is_checked_by_name(reward_model):
    with pytest.raises(ValueError, match="`entropy_weight`"):
        RewardGuidance(reward_model, entropy_weight="per_step")
    with pytest.raises(TypeError, match="`entropy_weight`"):
        RewardGuidance(reward_model, entropy_weight=1)
    logits, reward = setup()
    with pytest.raises(ValueError, match="`entropy_weight`"):
        optimize_logits(logits, reward, entropy_weight="always")
    assert RewardGuidance(reward_model, entropy_weight="step").config.entropy_weight == "step"


def test_reward_guidance_passes_its_entropy_weight_rule_to_the_ascent(tokenizer, reward_model):
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    traces = {}
    for mode in ("fixed", "step"):
        guidance = RewardGuidance(reward_model, guidance_steps=3, keep_trace=True, entropy_weight=mode)
        pipe("the cat", callback_on_step_end=guidance, gen_length=8, num_inference_steps=2, num_samples_per_prompt=2)
        traces[mode] = [entry["weight"] for entry in guidance.trace[:3]]  # the Adam steps of the first step
    assert all(torch.equal(w, traces["fixed"][0]) for w in traces["fixed"])
    assert torch.equal(traces["step"][0], traces["fixed"][0])
    assert not torch.equal(traces["step"][2], traces["step"][0])
