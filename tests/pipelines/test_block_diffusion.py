"""Block-diffusion models (SDAR, Fast-dLLM v2) in the pipeline: decoded as their references do it, with an exact key
/value cache, every row on its own; guidance in their current block; bad settings refused before model work."""

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.testing import tiny_block_diffusion_lm, tiny_reward_model

PROMPTS = ["the cat", "a man and a woman walked to the old city by the sea", "why"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _sharpen(module, args, output):
    output.logits = (
        output.logits * 10.0
    )  # confidences far apart (a random model's near-ties flip with rounding), not tied at 1
    return output


def block_model(tokenizer, kind: str, block_size: int = 4, seed: int = 0, sharp: bool = True):
    model = tiny_block_diffusion_lm(len(tokenizer), tokenizer.mask_token_id, kind, block_size, seed)
    if sharp:
        model.register_forward_hook(_sharpen)
    return model


def make_pipe(tokenizer, kind="sdar", **kwargs):
    pipe = EntRGiPipeline(block_model(tokenizer, kind, **kwargs), tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def reference_generate(model, prompt, gen_length, steps, threshold=None, stop_ids=()):
    """SDAR's `generate` at temperature 0, written from the algorithm: blocks aligned from the first token, each
    block's masked count split evenly over its steps (remainder first, capped at what is masked), the argmax
    committed by its probability (low_confidence_static; with `threshold`, low_confidence_dynamic), the whole
    sequence so far run without a cache; stop after the block that holds a stop id. Fast-dLLM v2 reads its logits one
    position earlier."""
    config = model.config
    b, mask, shift = config.block_size, config.mask_token_id, int(config.logits_shift)
    p = len(prompt)
    total = -(-(p + gen_length) // b) * b
    x = torch.full((total,), mask)
    x[:p] = torch.tensor(prompt)
    for start in range(p // b * b, total, b):
        block = slice(start, start + b)
        m0 = int((x[block] == mask).sum())
        counts = [m0 // steps + (i < m0 % steps) for i in range(steps)]
        for count in counts:
            masked = x[block] == mask
            if not masked.any():
                break
            logits = model(x[None, : start + b]).logits[0].float()
            logits = logits[start - shift : start + b - shift] if start >= shift else logits[:b]
            logits[:, mask] = float("-inf")
            confidence, token = logits.softmax(-1).max(-1)
            confidence = torch.where(masked, confidence, float("-inf"))
            k = min(count, int(masked.sum()))
            if threshold is not None:
                above = int(((confidence > threshold) & masked).sum())
                k = above if above >= k else k
            chosen = confidence.topk(k).indices
            x[start + chosen] = token[chosen]
        response = x[max(start, p) : start + b]
        if any(int(t) in stop_ids for t in response):
            break
    out = x[p : p + gen_length]
    stops = torch.isin(out, torch.tensor(list(stop_ids), dtype=torch.long))
    after = stops.int().cumsum(0) > 0
    first = stops & (after.int().cumsum(0) == 1)
    return torch.where(after & ~first, stop_ids[0], out) if stop_ids else out


@pytest.mark.parametrize("kind", ["sdar", "fast_dllm"])
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_unguided_greedy_decoding_equals_the_reference_one_prompt_at_a_time(tokenizer, kind, threshold):
    pipe = make_pipe(tokenizer, kind)
    stops = pipe.stop_token_ids
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        out = pipe(
            prompt, gen_length=10, num_inference_steps=6, num_samples_per_prompt=1, temperature=0, threshold=threshold
        )
        expected = reference_generate(pipe.model, ids, 10, 2, threshold, stops)
        assert out.sequences[0, 0].tolist() == expected.tolist(), prompt


@pytest.mark.parametrize("kind", ["sdar", "fast_dllm"])
def test_a_batch_of_prompts_of_different_lengths_gives_every_row_its_own_tokens(tokenizer, kind):
    pipe = make_pipe(tokenizer, kind)
    batch = pipe(PROMPTS, gen_length=10, num_inference_steps=6, num_samples_per_prompt=2, temperature=0, threshold=0.5)
    for i, prompt in enumerate(PROMPTS):
        alone = pipe(
            prompt, gen_length=10, num_inference_steps=6, num_samples_per_prompt=1, temperature=0, threshold=0.5
        )
        assert batch.sequences[i, 0].tolist() == alone.sequences[0, 0].tolist() == batch.sequences[i, 1].tolist()
        # rows advance on their own: a row in the batch takes part in as many calls as it makes alone
        assert batch.row_nfe[i, 0] == alone.nfe == alone.row_nfe[0, 0]
    assert batch.nfe >= int(batch.row_nfe.max())


@pytest.mark.parametrize("kind", ["sdar", "fast_dllm"])
@pytest.mark.parametrize("guidance", ["none", "entrgi", "aps", "expectation"])
def test_the_exact_cache_and_no_cache_give_the_same_tokens_for_the_same_seed(tokenizer, kind, guidance):
    pipe = make_pipe(tokenizer, kind, sharp=False)
    reward = tiny_reward_model(len(tokenizer))
    runs = {}
    for kv_cache in ("auto", None):
        runs[kv_cache] = pipe(
            PROMPTS[:2],
            reward_model=reward,
            guidance=guidance,
            gen_length=8,
            num_inference_steps=4,
            num_samples_per_prompt=2,
            guidance_steps=2,
            kv_cache=kv_cache,
            generator=torch.Generator().manual_seed(0),
        )
    assert torch.equal(runs["auto"].sequences, runs[None].sequences)
    torch.testing.assert_close(runs["auto"].rewards, runs[None].rewards)
    # the cache adds the prefill and one commit per block, and saves the prefix in every step (not counted here)
    assert runs["auto"].nfe > runs[None].nfe


def test_guidance_sees_the_committed_prefix_and_the_current_block_and_reports_the_same_reward(tokenizer):
    pipe = make_pipe(tokenizer, "sdar", sharp=False)
    reward = tiny_reward_model(len(tokenizer))
    guidance = RewardGuidance(reward, guidance="aps", guidance_steps=1, keep_trace=True)
    out = pipe(
        "the cat",
        callback_on_step_end=guidance,
        gen_length=8,
        num_inference_steps=4,
        num_samples_per_prompt=2,
        temperature=0,
        generator=torch.Generator().manual_seed(0),
    )
    assert guidance.trace, "block-causal steps are guided"
    for entry in guidance.trace:
        visible = entry["visible"]
        # the first block of "the cat" ([CLS] the cat [SEP]: 4 tokens) starts the response; each step sees up to
        # the end of its block and nothing after
        assert int(visible.sum(-1).max()) <= 8
    # the reward guidance computes for the final tokens (as committed tokens, its own layout) is the reported
    # reward of the decoded text: the same tokens, the same reward
    on_tokens = guidance.reward_of_tokens(out.sequences.reshape(2, -1))
    torch.testing.assert_close(on_tokens, out.rewards.reshape(-1), rtol=0, atol=1e-5)


def test_finished_rows_leave_the_batch(tokenizer):
    pipe = make_pipe(tokenizer, "sdar")
    eos = pipe.eos_token_id
    shapes = []
    pipe.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(
            kwargs["input_ids"].shape if "input_ids" in kwargs else args[0].shape
        ),
        with_kwargs=True,
    )

    def end_first_row(module, args, output):  # row 0 writes end-of-sequence at once, the others never
        output.logits[0, :, eos] = 1e4 if output.logits.shape[0] == 4 else output.logits[0, :, eos]
        output.logits[1:, :, eos] = -1e4
        return output

    pipe.model.register_forward_hook(end_first_row)
    out = pipe(PROMPTS[:2], gen_length=12, num_inference_steps=6, num_samples_per_prompt=2, temperature=0)
    assert out.sequences[0, 0, 0] == eos
    assert out.row_nfe[0, 0] < out.row_nfe[1, 0]
    assert min(shape[0] for shape in shapes) < 4, "a finished row costs no further dLLM compute"


@pytest.mark.parametrize("guidance", ["entrgi", "none"])
def test_a_guided_call_goes_on_when_rows_finish_early(tokenizer, guidance):
    """The rows still decoding are guided with their own prompts (`active_rows`) once others have left the batch, and
    every reported reward is the reward of its sample's own text."""
    pipe = make_pipe(tokenizer, "sdar", sharp=False)
    eos = pipe.eos_token_id

    def end_first_prompt(module, args, output):  # prompt 0's samples write end-of-sequence at once
        if output.logits.shape[0] == 4:
            output.logits[:2, :, eos] = 1e4
        return output

    pipe.model.register_forward_hook(end_first_prompt)
    reward = tiny_reward_model(len(tokenizer))
    out = pipe(
        PROMPTS[:2],
        reward_model=reward,
        guidance=guidance,
        reward_prompt=["a cat", "the sea"],
        gen_length=12,
        num_inference_steps=6,
        num_samples_per_prompt=2,
        guidance_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert (out.row_nfe[0] < out.row_nfe[1]).all()
    assert out.rewards.shape == (2, 2) and out.rewards.isfinite().all()
    assert (out.sequences[0, :, 0] == eos).all() and (out.sequences[1] != tokenizer.mask_token_id).all()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(kv_cache="fast"), ValueError, "`kv_cache`"),
        (dict(kv_cache="dual"), ValueError, "kv_cache='dual'"),
        (dict(block_length=8), ValueError, "block size"),
        (dict(guidance_scope="response"), ValueError, "guidance_scope='response'"),
        (dict(num_inference_steps=5), ValueError, "`num_inference_steps`"),
        (dict(resample="smc"), ValueError, "reward"),
    ],
)
def test_bad_settings_are_refused_before_any_model_work(tokenizer, kwargs, error, message):
    pipe = make_pipe(tokenizer, "sdar")
    calls = []
    pipe.model.register_forward_pre_hook(lambda *a: calls.append(1))
    if kwargs.get("reward_model") == "rm":
        kwargs = {**kwargs, "reward_model": tiny_reward_model(len(tokenizer))}
    with pytest.raises(error, match=message):
        pipe("the cat", gen_length=8, num_inference_steps=kwargs.pop("num_inference_steps", 4), **kwargs)
    assert not calls


def test_a_full_attention_model_without_the_cache_refuses_the_approximate_caches(pipe):
    # a BERT dLLM cannot take a FullAttentionKVCache (tests/pipelines/test_fast_dllm_cache.py: Dream and LLaDA can)
    with pytest.raises(ValueError, match="kv_cache='prefix'"):
        pipe("the cat", gen_length=4, num_inference_steps=2, kv_cache="prefix")


def test_the_command_line_flag_reaches_the_call():
    import argparse

    from entrgi_pipelines.runs import add_sampling_arguments, sampling_kwargs

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser, steps=8, gen_length=8)
    assert sampling_kwargs(parser.parse_args([]))["kv_cache"] == "auto"
    assert sampling_kwargs(parser.parse_args(["--kv-cache", "none"]))["kv_cache"] is None
    assert sampling_kwargs(parser.parse_args([]))["guidance_scope"] is None  # the model's default scope


def test_the_mask_token_comes_from_the_model_config_when_the_tokenizer_has_none(bpe_tokenizer_without_mask):
    """dLLM v3's tokenizer (SmolLM2's) has no mask token; its Fast-dLLM config names one, which the pipeline uses."""
    tokenizer = bpe_tokenizer_without_mask
    model = tiny_block_diffusion_lm(len(tokenizer), 5, "fast_dllm")
    pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.resolve_mask_token_id() == 5 and pipe.resolve_mask_token_id(7) == 7
    out = pipe(["the cat"], gen_length=8, num_inference_steps=8, num_samples_per_prompt=1, temperature=0)
    assert 5 not in out.sequences.flatten().tolist()


@pytest.fixture
def bpe_tokenizer_without_mask():
    from entrgi_pipelines.testing import tiny_bpe_tokenizer

    tokenizer = tiny_bpe_tokenizer()
    assert tokenizer.mask_token_id is None
    return tokenizer


SMC = dict(
    gen_length=12,
    num_inference_steps=6,
    num_samples_per_prompt=3,
    resample="smc",
    resample_every=1,
    temperature=1.0,
)


@pytest.mark.parametrize("kind", ["sdar", "fast_dllm"])
def test_smc_that_never_resamples_is_the_call_without_it(tokenizer, kind):
    pipe = make_pipe(tokenizer, kind)
    reward = tiny_reward_model(len(tokenizer))
    run = dict(SMC, reward_model=reward, guidance="none")
    plain = pipe(PROMPTS, **{**run, "resample": "none"}, generator=torch.Generator().manual_seed(0))
    never = pipe(PROMPTS, **run, resample_temperature=1e9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.sequences, never.sequences)
    assert never.resample_steps and not any(any(r) for r in never.resampled)


@pytest.mark.parametrize("kind", ["sdar", "fast_dllm"])
@pytest.mark.parametrize("potential", ["hard", "guidance"])
def test_smc_resamples_rows_and_their_cache_rows(tokenizer, kind, potential):
    """Resampled rows take their source's tokens, block, step and cache rows: with the exact cache and without it the
    same seed gives the same tokens, and the same resampling."""
    pipe = make_pipe(tokenizer, kind)
    reward = tiny_reward_model(len(tokenizer), scale=40.0)
    run = dict(SMC, reward_model=reward, guidance="entrgi", guidance_steps=1, potential=potential)
    runs = {
        cache: pipe(
            PROMPTS, **run, resample_temperature=1e-3, kv_cache=cache, generator=torch.Generator().manual_seed(1)
        )
        for cache in ("auto", None)
    }
    cached, uncached = runs["auto"], runs[None]
    assert any(any(r) for r in cached.resampled)  # resampling happened
    assert cached.resampled == uncached.resampled and torch.equal(cached.ancestry, uncached.ancestry)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert (cached.sequences != tokenizer.mask_token_id).all() and cached.rewards.isfinite().all()


def test_the_cache_choice_is_kept_in_the_schedulers_config_and_saved_with_the_pipeline(tokenizer, tmp_path):
    pipe = make_pipe(tokenizer, "sdar", sharp=False)
    run = dict(gen_length=8, num_inference_steps=4, num_samples_per_prompt=1, temperature=0)
    cached, uncached = pipe(PROMPTS, **run), pipe(PROMPTS, kv_cache=None, **run)
    assert cached.nfe != uncached.nfe  # the prefill and the commits

    pipe.scheduler = MaskedDiffusionScheduler.from_config(pipe.scheduler.config, kv_cache=None)
    pipe.save_pretrained(tmp_path)
    assert '"kv_cache": null' in (tmp_path / "scheduler" / "scheduler_config.json").read_text()
    loaded = EntRGiPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.kv_cache is None
    out = loaded(PROMPTS, **run)  # "auto" defers to the scheduler's choice: no cache
    assert out.nfe == uncached.nfe and torch.equal(out.sequences, uncached.sequences)
    assert loaded(PROMPTS, kv_cache="prefix", **run).nfe == cached.nfe  # an explicit choice wins
    with pytest.raises(ValueError, match="`kv_cache`"):
        MaskedDiffusionScheduler(kv_cache="fast")
