"""Fast-dLLM's approximate key/value caches for full-attention dLLMs (`kv_cache="prefix"` / `"dual"`, issue 22 item 3):
the native Dream and LLaDA forward with a `FullAttentionKVCache`, and the pipeline's use of it."""

from __future__ import annotations

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.models import DreamConfig, DreamModel, FullAttentionKVCache, LLaDAConfig, LLaDAModelLM
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model

from ..models import official
from ..models.test_native_models import HostReads

PROMPTS = ["the cat sat", "a man and a woman walked to the old city by the sea"]
FAMILIES = {
    "dream": (official.dream_config, official.dream_tensors, DreamConfig, DreamModel, "num_hidden_layers"),
    "llada": (official.llada_config, official.llada_tensors, LLaDAConfig, LLaDAModelLM, "n_layers"),
}

pytestmark = pytest.mark.usefixtures("one_thread")
cache_reorder = FullAttentionKVCache.reorder


def _sharpener(scale: float):
    def sharpen(module, args, output):
        output.logits = output.logits * scale  # confidences far apart: a random model's near-ties flip with rounding
        return output

    return sharpen


def native_model(tokenizer, family: str, layers: int = 2, sharp: bool | float = False):
    """A tiny published-format Dream or LLaDA model in float32, built in memory."""
    make_config, make_tensors, config_class, model_class, depth = FAMILIES[family]
    config = make_config(len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id, **{depth: layers})
    model = model_class(config_class(**config))
    model.load_state_dict({k: v.float() for k, v in make_tensors(config).items()})
    if sharp:
        model.register_forward_hook(_sharpener(10.0 if sharp is True else sharp))
    return model.eval()


def make_pipe(tokenizer, family: str, **kwargs) -> EntRGiPipeline:
    pipe = EntRGiPipeline(native_model(tokenizer, family, **kwargs), tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def padded_batch(pipe, gen_length=8):
    """The pipeline's layout `[left-padded prompt | masks]` with the inputs it passes (Dream: a pairwise mask)."""
    ids, _ = pipe.encode_prompt(PROMPTS)
    x, attention = pipe.prepare_sequences(ids, 1, gen_length, pipe.tokenizer.mask_token_id, "cpu")
    return x, pipe.model_inputs(attention), x.shape[1] - gen_length


def sliced_inputs(inputs: dict, lo: int, hi: int) -> dict:
    """The inputs of columns `[lo, hi)` against a cache: their positions, the pairwise mask's rows, the padding mask
    over every key."""
    out = {}
    for name, value in inputs.items():
        out[name] = value[:, lo:hi] if name == "position_ids" else value[:, :, lo:hi] if value.dim() == 4 else value
    return out


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


# --------------------------------------------------------------------------------------------------------------------
# The model: a full forward fills the cache, a sliced forward reads it
# --------------------------------------------------------------------------------------------------------------------


def test_filling_forward_gives_the_uncached_logits_and_stores_every_layer(family, chat_tokenizer):
    pipe = make_pipe(chat_tokenizer, family)
    x, inputs, _ = padded_batch(pipe)
    cache = FullAttentionKVCache()
    with torch.no_grad():
        plain = pipe.model(x, **inputs).logits
        filled = pipe.model(x, past_key_values=cache, use_cache=True, **inputs).logits
    assert torch.equal(filled, plain)
    assert len(cache) == 2 and cache.seq_length == x.shape[1]
    assert cache.key_cache[0].shape[:3] == (x.shape[0], 2 if family == "dream" else 4, x.shape[1])


@pytest.mark.parametrize("span", ["block", "block_to_end", "shifted_block", "scattered"])
def test_sliced_forward_equals_the_full_forward_when_nothing_else_changed(family, chat_tokenizer, span):
    """With left padding, the pipeline's masks and positions, and every span the pipeline reads (the dual cache's
    block, the prefix cache's block and suffix, either one token earlier for Dream's shift), and any columns."""
    pipe = make_pipe(chat_tokenizer, family)
    x, inputs, start = padded_batch(pipe)
    cache = FullAttentionKVCache()
    lo, hi = {"block": (start, start + 4), "block_to_end": (start + 4, x.shape[1])}.get(span, (start - 1, start + 4))
    columns = torch.arange(lo, hi) if span != "scattered" else torch.tensor([1, start + 2, start + 5])
    with torch.no_grad():
        full = pipe.model(x, past_key_values=cache, **inputs).logits
        before = [k.clone() for k in cache.key_cache]
        if span == "scattered":
            sliced = {k: v[:, columns] if k == "position_ids" else v for k, v in inputs.items() if v.dim() == 2}
            if "attention_mask" in inputs and inputs["attention_mask"].dim() == 4:
                sliced["attention_mask"] = inputs["attention_mask"][:, :, columns]
        else:
            sliced = sliced_inputs(inputs, lo, hi)
        part = pipe.model(x[:, columns], past_key_values=cache, cache_position=columns, **sliced).logits
    torch.testing.assert_close(part, full[:, columns], atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.key_cache))  # reading leaves the cache as it was


def test_one_layer_reads_exact_keys_after_the_block_changed(family, chat_tokenizer):
    """In a one-layer model a column's key and value depend on its own token only, so the cache stays exact while
    the block changes: the sliced forward gives the full forward's logits of the changed sequence. (With more layers
    the cached columns' keys are stale: Fast-dLLM's approximation.)"""
    pipe = make_pipe(chat_tokenizer, family, layers=1)
    x, inputs, start = padded_batch(pipe)
    cache = FullAttentionKVCache()
    columns = torch.arange(start, start + 4)
    with torch.no_grad():
        pipe.model(x, past_key_values=cache, **inputs)
        x[:, start : start + 2] = torch.tensor([5, 6])  # two tokens of the block committed
        part = pipe.model(
            x[:, columns], past_key_values=cache, cache_position=columns, **sliced_inputs(inputs, start, start + 4)
        ).logits
        full = pipe.model(x, **inputs).logits
        deep = make_pipe(chat_tokenizer, family, layers=2).model
        deep_cache = FullAttentionKVCache()
        x[:, start : start + 2] = chat_tokenizer.mask_token_id
        deep(x, past_key_values=deep_cache, **inputs)
        x[:, start : start + 2] = torch.tensor([5, 6])
        stale = deep(
            x[:, columns], past_key_values=deep_cache, cache_position=columns, **sliced_inputs(inputs, start, start + 4)
        ).logits
        fresh = deep(x, **inputs).logits[:, columns]
    torch.testing.assert_close(part, full[:, columns], atol=1e-5, rtol=1e-5)
    assert (stale - fresh).abs().max() > 1e-3  # two layers: the approximation shows


def test_sliced_forward_never_waits_for_the_device_and_is_differentiable(family, chat_tokenizer):
    pipe = make_pipe(chat_tokenizer, family)
    x, inputs, start = padded_batch(pipe)
    cache = FullAttentionKVCache()
    columns = torch.arange(start, start + 4)
    sliced = sliced_inputs(inputs, start, start + 4)
    with torch.no_grad(), HostReads() as reads:
        pipe.model(x, past_key_values=cache, **inputs)
        pipe.model(x[:, columns], past_key_values=cache, cache_position=columns, **sliced)
    assert reads.seen == []
    embeds = pipe.model.get_input_embeddings()(x[:, columns]).detach().requires_grad_(True)
    logits = pipe.model(inputs_embeds=embeds, past_key_values=cache, cache_position=columns, **sliced).logits
    logits.logsumexp(-1).sum().backward()
    assert embeds.grad.isfinite().all() and (embeds.grad.abs().sum(-1) > 0).all()
    assert all(not k.requires_grad for k in cache.key_cache + cache.value_cache)


def test_reordered_rows_read_their_own_keys(family, chat_tokenizer):
    pipe = make_pipe(chat_tokenizer, family)
    x, inputs, start = padded_batch(pipe)
    order = torch.tensor([1, 1, 0])
    x, inputs = x[order], {k: v[order] for k, v in inputs.items()}
    cache = FullAttentionKVCache()
    columns = torch.arange(start, x.shape[1])
    with torch.no_grad():
        full = pipe.model(x, **inputs).logits
        pipe.model(x[[1, 0, 2]], past_key_values=cache, **{k: v[[1, 0, 2]] for k, v in inputs.items()})
        cache.reorder(torch.tensor([1, 0, 2]))
        part = pipe.model(
            x[:, columns], past_key_values=cache, cache_position=columns, **sliced_inputs(inputs, start, x.shape[1])
        ).logits
    torch.testing.assert_close(part, full[:, columns], atol=1e-5, rtol=1e-5)


def test_bad_cache_use_is_refused(family, chat_tokenizer):
    model = native_model(chat_tokenizer, family)
    x = torch.tensor([[5, 6, 7, 8]])
    cache = FullAttentionKVCache()
    columns = torch.arange(2, 4)
    with pytest.raises(ValueError, match="fill it first"):
        model(x[:, 2:], past_key_values=cache, cache_position=columns)
    with torch.no_grad():
        model(x, past_key_values=cache)
    with pytest.raises(ValueError, match="cache_position"):
        model(x[:, 2:], past_key_values=cache, cache_position=torch.arange(3))
    with pytest.raises(TypeError, match="cache_position"):
        model(x[:, 2:], past_key_values=cache, cache_position=[2, 3])
    with pytest.raises(ValueError, match="rows"):
        model(x[:, 2:].repeat(2, 1), past_key_values=cache, cache_position=columns)
    with pytest.raises(ValueError, match="attention_mask"):  # the padding mask covers every key, not the input only
        model(x[:, 2:], past_key_values=cache, cache_position=columns, attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="use_cache"):
        model(x, past_key_values=cache, use_cache=False)
    with pytest.raises(ValueError, match="cache_position"):  # a position without a cache
        model(x, cache_position=torch.arange(4))


# --------------------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------------------


def recorded_forwards(model) -> list[dict]:
    calls = []
    model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    return calls


RUN = dict(gen_length=8, num_inference_steps=8, num_samples_per_prompt=2, block_length=4, guidance_steps=2)


@pytest.mark.parametrize("kv_cache", ["auto", None])
def test_auto_and_none_run_no_cache_on_full_attention_models(family, chat_tokenizer, kv_cache):
    pipe = make_pipe(chat_tokenizer, family, sharp=True)
    calls = recorded_forwards(pipe.model)
    out = pipe(PROMPTS, kv_cache=kv_cache, generator=torch.Generator().manual_seed(0), **RUN)
    default = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **RUN)
    assert torch.equal(out.sequences, default.sequences)
    assert calls and all("past_key_values" not in kwargs and "cache_position" not in kwargs for kwargs in calls)


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_steps_run_the_whole_sequence_at_each_blocks_first_step_and_the_block_after(
    family, chat_tokenizer, kv_cache, threshold
):
    pipe = make_pipe(chat_tokenizer, family, sharp=True)
    calls = recorded_forwards(pipe.model)
    out = pipe(PROMPTS, kv_cache=kv_cache, threshold=threshold, generator=torch.Generator().manual_seed(0), **RUN)
    assert out.nfe == len(calls) and (out.sequences != chat_tokenizer.mask_token_id).all()
    fills = [i for i, kwargs in enumerate(calls) if "cache_position" not in kwargs]
    assert len(fills) == 2 and fills[0] == 0  # one per block of 4
    assert all(isinstance(kwargs["past_key_values"], FullAttentionKVCache) for kwargs in calls)
    shift = int(pipe.logits_shift)
    width = calls[0]["position_ids"].shape[1]
    start = width - RUN["gen_length"]
    for i, kwargs in enumerate(calls):
        if i in fills:
            continue
        block = 0 if i < fills[1] else 4
        end = width if kv_cache == "prefix" else start + block + 4
        assert kwargs["cache_position"].tolist() == list(range(start + block - shift, end))
    if threshold is None:
        assert out.nfe == 8


# ("dual", "response_scope") is refused: test_bad_cache_settings_are_refused_before_model_work
@pytest.mark.parametrize(
    ("kv_cache", "setting"),
    [(c, s) for c in ("prefix", "dual") for s in ("greedy", "sampled", "no_blocks", "smc")]
    + [("prefix", "response_scope")],
)
def test_one_layer_model_gives_the_uncached_tokens(family, chat_tokenizer, kv_cache, setting, monkeypatch):
    """A one-layer model's cached keys and values are exact (each depends on its own token), so with either cache
    the pipeline gives the tokens it gives without one, for the same seed: the slicing, Dream's shift, the padding,
    the logits handed to the scheduler and guidance, and the rows reordered by SMC are all checked by this."""
    # SMC: particles that differ and weights far apart, so that rows are reordered inside a block
    pipe = make_pipe(chat_tokenizer, family, layers=1, sharp=3.0 if setting == "smc" else True)
    reorders = []
    monkeypatch.setattr(
        FullAttentionKVCache, "reorder", lambda cache, index: reorders.append(index) or cache_reorder(cache, index)
    )
    # the block scope, the default of "dual" with blocks, for both runs (no cache defaults to the response scope)
    reward = tiny_reward_model(len(chat_tokenizer))
    run = dict(RUN, reward_model=reward, guidance="entrgi", temperature=0.0, guidance_scope="block")
    if setting == "sampled":
        run |= dict(temperature=0.7, threshold=0.3)
    elif setting == "no_blocks":
        run |= dict(block_length=None)
    elif setting == "smc":
        run |= dict(resample="smc", resample_every=1, resample_ess=1.0, resample_temperature=0.01)
        run |= dict(temperature=1.0, guidance="none")
    elif setting == "response_scope":  # the prefix cache computes every masked position
        run |= dict(guidance_scope="response")
    seen = {None: [], kv_cache: []}

    def block_logits(cache):  # the logits of every step's block, as guidance left them, for the scheduler
        def callback(pipe, step, timestep, tensors):
            start, end = tensors["block_bounds"][0].tolist()
            seen[cache].append(tensors["logits"][:, start:end].clone())
            return {}

        return callback

    runs = [
        pipe(
            PROMPTS,
            kv_cache=c,
            generator=torch.Generator().manual_seed(1),
            callback_on_step_end=block_logits(c),
            callback_on_step_end_tensor_inputs=["logits", "block_bounds"],
            **run,
        )
        for c in (None, kv_cache)
    ]
    assert torch.equal(runs[1].sequences, runs[0].sequences)
    assert runs[1].nfe == runs[0].nfe == len(seen[None]) == len(seen[kv_cache])
    for cached, uncached in zip(seen[kv_cache], seen[None]):
        torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runs[1].rewards, runs[0].rewards)
    if setting == "smc":
        assert any(not torch.equal(index, torch.arange(4)) for index in reorders)  # rows moved inside the loop


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
@pytest.mark.parametrize("guidance", ["entrgi", "aps", "expectation", "none"])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_every_guidance_method_runs_with_either_cache(family, chat_tokenizer, kv_cache, guidance, threshold):
    pipe = make_pipe(chat_tokenizer, family, sharp=True)
    run = dict(RUN, reward_model=tiny_reward_model(len(chat_tokenizer)), guidance=guidance, threshold=threshold)
    out = pipe(PROMPTS, kv_cache=kv_cache, generator=torch.Generator().manual_seed(0), **run)
    again = pipe(PROMPTS, kv_cache=kv_cache, generator=torch.Generator().manual_seed(0), **run)
    assert out.sequences.shape == (2, 2, 8) and (out.sequences != chat_tokenizer.mask_token_id).all()
    assert out.rewards.shape == (2, 2) and out.rewards.isfinite().all()
    assert torch.equal(out.sequences, again.sequences)
    assert 2 <= out.nfe <= 8


def test_dual_with_one_block_is_the_prefix_cache(family, chat_tokenizer):
    """Without blocks the whole response is the block: nothing follows it, so "dual" and "prefix" both cache only
    the prompt, run the same forwards and give the same tokens (and "dual" accepts the response scope there)."""
    pipe = make_pipe(chat_tokenizer, family, sharp=True)
    run = dict(RUN, block_length=None, reward_model=tiny_reward_model(len(chat_tokenizer)), guidance_scope="response")
    outs = [pipe(PROMPTS, kv_cache=c, generator=torch.Generator().manual_seed(2), **run) for c in ("prefix", "dual")]
    assert torch.equal(outs[0].sequences, outs[1].sequences)


def test_bad_cache_settings_are_refused_before_model_work(family, chat_tokenizer):
    pipe = make_pipe(chat_tokenizer, family)
    calls = recorded_forwards(pipe.model)
    reward = tiny_reward_model(len(chat_tokenizer))
    with pytest.raises(ValueError, match="guidance_scope='block'"):
        pipe(PROMPTS, kv_cache="dual", reward_model=reward, guidance_scope="response", **RUN)
    with pytest.raises(ValueError, match="kv_cache"):
        pipe(PROMPTS, kv_cache="suffix", **RUN)
    assert calls == []
    # the default scope under "dual" with blocks is the block
    out = pipe(PROMPTS, kv_cache="dual", reward_model=reward, generator=torch.Generator().manual_seed(0), **RUN)
    assert out.rewards.isfinite().all()


def test_a_model_that_cannot_take_the_cache_is_refused(tokenizer):
    pipe = EntRGiPipeline(tiny_masked_lm(len(tokenizer)), tokenizer, MaskedDiffusionScheduler())
    for kv_cache in ("prefix", "dual"):
        with pytest.raises(ValueError, match="FullAttentionKVCache.*BertForMaskedLM"):
            pipe(PROMPTS, kv_cache=kv_cache, **RUN)


@pytest.mark.parametrize("kv_cache", ["prefix", "dual"])
def test_the_caches_add_no_host_sync_to_a_guided_call(family, chat_tokenizer, kv_cache):
    """The same ops wait for the device with the cache as without it (a one-layer model: the same tokens, so the same
    decoding path), so the cached steps cost no host sync of their own."""
    pipe = make_pipe(chat_tokenizer, family, layers=1, sharp=True)
    run = dict(RUN, reward_model=tiny_reward_model(len(chat_tokenizer)), guidance_scope="block", threshold=0.3)
    pipe(PROMPTS, **run)  # builds the reward guidance (its vocabulary maps), which the next calls reuse
    pipe._lockstep = True  # without a cache, threshold decoding would let rows advance on their own: compare loops
    seen = {}
    for cache in (None, kv_cache):
        with HostReads() as reads:
            pipe(PROMPTS, kv_cache=cache, generator=torch.Generator().manual_seed(0), **run)
        seen[cache] = reads.seen
    assert seen[kv_cache] == seen[None] and seen[None]
