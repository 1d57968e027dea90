"""The reward model's block cache: with `guidance_scope="block"`, a causal reward model reads the prefix and the
committed blocks once per block and every Adam step only the current block and the suffix. Rewards and gradients
equal the uncached ones (float tolerance), the cache is rebuilt exactly when a row's committed part changes, and
encoder rewards keep working without it."""

import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from transformers import BertForSequenceClassification

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance import CausalLMReward, RewardTemplate, RewardTerm
from entrgi_pipelines.testing import (
    tiny_bert_config,
    tiny_block_diffusion_lm,
    tiny_bpe_tokenizer,
    tiny_causal_lm,
    tiny_decoder_reward_model,
    tiny_masked_lm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WITH_PROMPT = RewardTemplate(
    messages=[
        {"role": "system", "content": "the prompt was : {prompt}"},
        {"role": "user", "content": "is it about {target} ? {response}"},
        {"role": "assistant", "content": "it is about {target}"},
    ],
    score="target",
)
PROMPTS = ["the cat sat on the old road", "why", "the cat sat on the old road", "a man and a woman walked"]
TARGETS = ["food and bread", "war", "food and bread", "the sea and the ship and the sun"]
# Rows at different blocks of 4 (per-row bounds): the first block, one that begins inside the prompt (a block-causal
# model's first block), a middle one and the last one.
BOUNDS = torch.tensor([[0, 4], [-2, 2], [4, 8], [8, 12]])
L = 12


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe_tokenizer()


def reward_model(kind, bpe):
    if kind == "causal_lm":
        return CausalLMReward(tiny_causal_lm(len(bpe), seed=3), WITH_PROMPT)
    return tiny_decoder_reward_model(len(bpe), seed=1)


def responses(bpe, seed=0):
    """Tokens `(4, L)` and what the reward model sees: cut at each row's block end, row 2 at an end-of-sequence
    token inside its committed part, row 3 inside its current block."""
    tokens = torch.randint(3, len(bpe), (4, L), generator=torch.Generator().manual_seed(seed))
    visible = torch.arange(L) < BOUNDS[:, 1:]
    visible[2, 3:] = False
    visible[3, 10:] = False
    return tokens, visible


def reward_and_gradient(term, embeds, visible, block=None, rows=None):
    embeds = embeds.detach().requires_grad_(True)
    reward = term.reward(embeds, visible, block, rows)
    (grad,) = torch.autograd.grad(reward.sum(), embeds)
    return reward.detach(), grad


@pytest.mark.parametrize("prefix_cache", [None, False])
@pytest.mark.parametrize("kind", ["causal_lm", "sequence_classifier"])
def test_block_cache_gives_the_uncached_rewards_and_block_gradients(kind, prefix_cache, bpe):
    model = reward_model(kind, bpe)
    cached = RewardTerm(model, bpe, prefix_cache=prefix_cache)
    uncached = RewardTerm(model, bpe, prefix_cache=False, block_cache=False)
    assert cached.block_cache and not uncached.block_cache
    tokens, visible = responses(bpe)
    for term in (cached, uncached):
        term.prepare(TARGETS, "cpu", PROMPTS)
    block = cached.update_block_cache(tokens, visible, BOUNDS)
    assert block.cache is not None and block.width == 4
    embeds = cached.dllm_embedding_matrix()[tokens]
    reward, grad = reward_and_gradient(cached, embeds, visible, block)
    expected, expected_grad = reward_and_gradient(uncached, embeds, visible)
    torch.testing.assert_close(reward, expected, atol=1e-5, rtol=1e-5)
    in_block = (torch.arange(L) >= BOUNDS[:, :1]) & (torch.arange(L) < BOUNDS[:, 1:])
    torch.testing.assert_close(grad[in_block], expected_grad[in_block], atol=1e-6, rtol=1e-4)
    # the block's seen positions get gradients, and nothing else does (the committed part is in the cache)
    assert grad[in_block & visible].abs().sum(-1).gt(0).all() and grad[~in_block].abs().sum() == 0
    # the reported reward of the same tokens (no cache for the committed part) is the guidance-time one
    torch.testing.assert_close(cached.reward(embeds, visible), reward, atol=1e-5, rtol=1e-5)


def test_rows_select_their_prepared_samples(bpe):
    term = RewardTerm(reward_model("causal_lm", bpe), bpe)
    term.prepare(TARGETS, "cpu", PROMPTS)
    tokens, visible = responses(bpe)
    embeds = term.dllm_embedding_matrix()[tokens]
    everyone, _ = reward_and_gradient(term, embeds, visible, term.update_block_cache(tokens, visible, BOUNDS))
    rows = torch.tensor([3, 1])  # finished rows left the batch
    block = term.update_block_cache(tokens[rows], visible[rows], BOUNDS[rows], rows)
    some, _ = reward_and_gradient(term, embeds[rows], visible[rows], block, rows)
    torch.testing.assert_close(some, everyone[rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(term.reward(embeds[rows], visible[rows], rows=rows), everyone[rows], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="active_rows"):
        term.reward(embeds[rows], visible[rows])


def test_the_cache_is_extended_once_per_block_and_rebuilt_when_a_committed_token_changes(bpe):
    model = reward_model("sequence_classifier", bpe)
    term, reference = RewardTerm(model, bpe), RewardTerm(model, bpe, block_cache=False)
    for t in (term, reference):
        t.prepare(TARGETS, "cpu", PROMPTS)
    widths = []
    model.model.register_forward_pre_hook(lambda m, a, k: widths.append(k["inputs_embeds"].shape[1]), with_kwargs=True)
    tokens, visible = responses(bpe)

    def check(block, tokens):  # the cached reward and the block's gradients are the uncached ones
        embeds = term.dllm_embedding_matrix()[tokens]
        expected, expected_grad = reward_and_gradient(reference, embeds, visible)
        reward, grad = reward_and_gradient(term, embeds, visible, block)
        torch.testing.assert_close(reward, expected, atol=1e-5, rtol=1e-5)
        in_block = (torch.arange(L) >= block.start[:, None]) & (torch.arange(L) < block.start[:, None] + 4)
        torch.testing.assert_close(grad[in_block], expected_grad[in_block], atol=1e-6, rtol=1e-4)
        widths.clear()

    first = term.update_block_cache(tokens, visible, BOUNDS)
    assert widths == [8]  # once: the longest committed part (row 3: 8 tokens)
    widths.clear()
    check(first, tokens)
    # the same block: the same cache, whatever the current block's tokens become
    edited = tokens.clone()
    edited[:, 8:] = 5
    assert term.update_block_cache(edited, visible, BOUNDS.clone()) is first and widths == []
    # rows move on to their next block: the cache is extended by their newly committed tokens alone
    moved = BOUNDS.clone()
    moved[:2] += 4
    second = term.update_block_cache(tokens, visible, moved)
    assert second is not first and widths == [4]  # row 0: 4 new tokens, row 1: 2, rows 2 and 3: none
    widths.clear()
    check(second, tokens)
    # a committed token changes (SMC resampled the row): rebuilt from the prefix, once
    edited = tokens.clone()
    edited[3, 0] = tokens[3, 0] + 1
    third = term.update_block_cache(edited, visible, moved)
    assert widths == [8] and term.update_block_cache(edited, visible, moved) is third and widths == [8]
    widths.clear()
    check(third, edited)
    # every Adam step reads the block (4 positions) and the suffix only, not the prefix and committed part
    widths.clear()
    term.reward(term.dllm_embedding_matrix()[edited], visible, third)
    assert widths == [4 + term._context["suffix"].shape[1]]


def sdar_pipe(tokenizer, stop=False):
    model = tiny_block_diffusion_lm(len(tokenizer), tokenizer.mask_token_id)
    pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    stops = pipe.stop_token_ids

    def never_stop(module, args, output):  # every row decodes every block (the pipeline keeps all rows)
        output.logits[..., stops] = float("-inf")
        return output

    def first_row_stops(module, args, output):  # row 0 ends in its first block, the others never
        never_stop(module, args, output)
        if output.logits.shape[0] == 4:
            output.logits[0, :, stops[0]] = 1e4
        return output

    pipe.model.register_forward_hook(first_row_stops if stop else never_stop)
    return pipe


class RowsOfTheBatch(PipelineCallback):
    """Hands guidance the prepared sample of each row (`active_rows`) where row 0 has left the batch: what the
    pipeline must pass where finished rows leave."""

    tensor_inputs = ["logits"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        callback_kwargs["active_rows"] = torch.arange(4 - callback_kwargs["logits"].shape[0], 4)
        return callback_kwargs


def test_guidance_follows_the_rows_that_remain(tokenizer):
    pipe = sdar_pipe(tokenizer, stop=True)
    model = tiny_decoder_reward_model(len(tokenizer), seed=2)
    kwargs = dict(gen_length=12, num_inference_steps=6, num_samples_per_prompt=2)
    outs = []
    for block_cache in (None, False):
        guided = RewardGuidance(model, guidance="entrgi", guidance_steps=2, keep_trace=True, block_cache=block_cache)
        callbacks = MultiPipelineCallbacks([RowsOfTheBatch(), guided])
        generator = torch.Generator().manual_seed(0)
        outs.append((pipe(["the cat", "why"], callback_on_step_end=callbacks, generator=generator, **kwargs), guided))
    (cached, cached_guidance), (uncached, uncached_guidance) = outs
    assert cached.row_nfe[0, 0] < cached.row_nfe[1, 0], "row 0 left the batch"
    assert min(entry["tokens"].shape[0] for entry in cached_guidance.trace) == 3
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached_guidance.trace, uncached_guidance.trace, strict=True):
        torch.testing.assert_close(a["reward"], b["reward"], atol=1e-5, rtol=1e-5)
    # the pipeline hands guidance the rows still decoding itself (`active_rows`): `reward_model=` is the same call
    generator = torch.Generator().manual_seed(0)
    direct = pipe(["the cat", "why"], reward_model=model, guidance_steps=2, generator=generator, **kwargs)
    assert torch.equal(direct.sequences, cached.sequences)
    torch.testing.assert_close(direct.rewards, cached.rewards)


def full_attention_pipe(tokenizer):
    pipe = EntRGiPipeline(tiny_masked_lm(len(tokenizer)), tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("dllm", ["sdar", "blocks_of_full_attention", "blocks_with_smc"])
@pytest.mark.parametrize("guidance", ["entrgi", "aps"])
def test_guided_calls_are_the_same_with_and_without_the_block_cache(tokenizer, dllm, guidance, monkeypatch):
    pipe = sdar_pipe(tokenizer) if dllm == "sdar" else full_attention_pipe(tokenizer)
    blocks = {} if dllm == "sdar" else dict(block_length=4, guidance_scope="block")
    if dllm == "blocks_with_smc":  # rows are reordered at every step: their committed blocks change under the cache
        blocks.update(resample="smc", resample_every=1, resample_ess=1.0, resample_temperature=0.3)
    model = tiny_decoder_reward_model(len(tokenizer), seed=2)
    builds, build = [], RewardTerm._committed_cache  # each cache build: extended or from the prefix, and its width

    def spy(term, rows, past, tokens, keep, length):
        builds.append(("extended" if past is not None else "from the prefix", length))
        return build(term, rows, past, tokens, keep, length)

    monkeypatch.setattr(RewardTerm, "_committed_cache", spy)
    outs, guidances = [], []
    for block_cache in (None, False):
        guided = RewardGuidance(model, guidance=guidance, guidance_steps=2, keep_trace=True, block_cache=block_cache)
        out = pipe(
            ["the cat", "a man and a woman walked to the old city by the sea"],
            callback_on_step_end=guided,
            gen_length=12,
            num_inference_steps=6,
            num_samples_per_prompt=3 if dllm == "blocks_with_smc" else 2,
            generator=torch.Generator().manual_seed(0),
            **blocks,
        )
        outs.append(out)
        guidances.append(guided)
    assert guidances[0].terms[0].block_cache and not guidances[1].terms[0].block_cache
    assert guidances[0].terms[0]._block is not None and guidances[1].terms[0]._block is None
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    torch.testing.assert_close(outs[0].rewards, outs[1].rewards, atol=1e-5, rtol=1e-5)
    # once per block, the cache is extended by the block just committed (4 tokens); under SMC a reordered row's
    # committed tokens change, and the cache is rebuilt from the prefix (8 tokens)
    assert ("extended", 4) in builds
    assert (("from the prefix", 8) in builds) is (dllm == "blocks_with_smc")
    if dllm == "blocks_with_smc":
        assert outs[0].ancestry.tolist() == outs[1].ancestry.tolist()
    for cached, uncached in zip(guidances[0].trace, guidances[1].trace, strict=True):
        torch.testing.assert_close(cached["reward"], uncached["reward"], atol=1e-5, rtol=1e-5)
    if guidance == "aps":  # hard inputs: the guidance-time reward is the reward of the sampled tokens
        for entry in guidances[0].trace:
            seen = entry["visible"].sum(-1)
            on_tokens = guidances[0].reward_of_tokens(entry["tokens"], end=seen)
            torch.testing.assert_close(entry["reward"], on_tokens, atol=1e-5, rtol=1e-5)


def test_encoder_rewards_keep_working_without_it(tokenizer):
    model = BertForSequenceClassification(tiny_bert_config(len(tokenizer), num_labels=1)).eval()
    assert not RewardTerm(model, tokenizer).block_cache
    with pytest.raises(ValueError, match="block_cache=True"):
        RewardTerm(model, tokenizer, block_cache=True)
    with pytest.raises(ValueError, match="`block_cache`"):
        RewardGuidance(model, block_cache="yes")
    pipe = sdar_pipe(tokenizer)
    guided = RewardGuidance(model, guidance="entrgi", guidance_steps=1, block_cache=None)
    out = pipe("the cat", callback_on_step_end=guided, gen_length=8, num_inference_steps=4, num_samples_per_prompt=2)
    assert out.rewards.shape == (1, 2) and guided.terms[0]._block is None
