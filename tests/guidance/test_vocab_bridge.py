"""The vocabulary bridge (WordPiece dLLM -> byte-level BPE reward) and the reward invariant across it.

Invariant: for the same tokens, the reward seen during guidance with hard inputs (w = 1) equals the reward reported
for the decoded text (`RewardGuidance.score_texts`) whenever the round trip `tokens -> text -> reward tokens` gives
the mapped tokens back. Where it can differ (see `RewardGuidance.score_texts`):

- casing: an uncased dLLM's `god` maps to `ĠGod` when the reward vocabulary has no `Ġgod`; the text says "god";
- within-word segmentation: `love ##ly` maps to `Ġlove ly`, the text "lovely" re-encodes as `Ġlovely`;
- unmapped tokens (`##ing` here) go to the `unmapped_tokens` token; the text keeps the piece;
- the first token: the decoded text is stripped, so a response that starts with a token glued to the previous word
  (`,`) is re-read after the template's space (`Ġ,` instead of `,`).
"""

import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance, VocabularyMap
from entrgi_pipelines.guidance import CausalLMReward, RewardTemplate
from entrgi_pipelines.guidance.rewards import visible_before_eos
from entrgi_pipelines.guidance.vocab import token_surfaces
from entrgi_pipelines.testing import WORDS, tiny_bpe_tokenizer, tiny_causal_lm, tiny_masked_lm

JUDGE = RewardTemplate(
    messages=[
        {"role": "user", "content": "what is this text about ? text : {response}"},
        {"role": "assistant", "content": "this text is about {target}"},
    ],
    score="target",
)
# WordPiece token strings of responses; "exact" rows round-trip, the others show one documented difference each.
ROWS = {
    "exact": "the cat sat on the old road , and the dog ran .",
    "exact_cut_at_eos": "we walked to the city ! [SEP] dog dog dog",
    "casing": "the god of the king",
    "within_word": "a love ##ly day",
    "unmapped": "they were work ##ing",
    "first_token_glued": ", said the man",
}


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe_tokenizer()


@pytest.fixture(scope="module")
def dllm_pipe(tokenizer):
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def decode(tokenizer, tokens):
    """The pipeline's decoding: up to the first end-of-sequence token, special tokens skipped, stripped."""
    visible = visible_before_eos(tokens, tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(torch.where(visible, tokens, tokenizer.pad_token_id), skip_special_tokens=True)
    return [t.strip() for t in texts], visible


def test_surfaces_follow_markers_and_the_decoder(tokenizer, bpe):
    wordpiece = token_surfaces(tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    assert wordpiece[ids("the")] == ("the", True)
    assert wordpiece[ids("##ly")] == ("ly", False)
    assert wordpiece[ids(",")] == (",", False)  # BERT's decoder glues it to the previous word
    assert ids("[SEP]") not in wordpiece  # special tokens are matched by string or role, not surface
    byte_level = token_surfaces(bpe)
    assert byte_level[bpe.convert_tokens_to_ids("Ġthe")] == ("the", True)
    assert byte_level[bpe.convert_tokens_to_ids(",")] == (",", False)


def test_bridge_matches_surfaces_then_approximates(tokenizer, bpe):
    vmap = VocabularyMap.from_tokenizers(tokenizer, bpe)

    def target(token):
        i = tokenizer.convert_tokens_to_ids(token)
        return bpe.convert_ids_to_tokens(int(vmap.ids[i])), bool(vmap.mapped[i]), bool(vmap.exact[i])

    assert target("the") == ("Ġthe", True, True)
    assert target(",") == (",", True, True)  # not "Ġ,": the text reads "cat,"
    assert target("##ly") == ("ly", True, True)
    assert target("god") == ("ĠGod", True, False)  # casing: mapped, not exact
    assert target("##ing") == ("<|endoftext|>", False, False)  # no "ing" piece: the unk policy
    assert target("[SEP]") == ("<|im_end|>", True, True)  # by role: eos
    assert 0 < vmap.exact_coverage < vmap.coverage < 1
    strict = VocabularyMap.from_tokenizers(tokenizer, bpe, approximate=False)
    assert torch.equal(strict.mapped, vmap.exact) and strict.coverage == strict.exact_coverage
    assert not strict.mapped[tokenizer.convert_tokens_to_ids("god")]


def guidance_for_rows(dllm_pipe, bpe, n_rows):
    """A RewardGuidance prepared by a real call with one sample per row (targets and prompts differ per row)."""
    guidance = RewardGuidance(CausalLMReward(tiny_causal_lm(len(bpe), seed=5), JUDGE), bpe, guidance_steps=1)
    prompts = [["the cat", "why", "a man"][i % 3] for i in range(n_rows)]
    targets = [["food", "war and peace", "the sea"][i % 3] for i in range(n_rows)]
    dllm_pipe(
        prompts,
        callback_on_step_end=guidance,
        reward_prompt=targets,
        num_samples_per_prompt=1,
        gen_length=2,
        num_inference_steps=1,
    )
    return guidance


def test_hard_reward_in_guidance_equals_the_reported_reward_where_the_round_trip_is_exact(tokenizer, bpe, dllm_pipe):
    rows = [row.split() for row in ROWS.values()]
    width = max(map(len, rows))
    tokens = torch.tensor([tokenizer.convert_tokens_to_ids(r + ["[SEP]"] * (width - len(r))) for r in rows])
    guidance = guidance_for_rows(dllm_pipe, bpe, len(rows))
    vmap = guidance.terms[0].vocab_map
    # w = 1, every position committed: the reward input is the mapped tokens' own embeddings
    nothing = torch.zeros_like(tokens, dtype=torch.bool)
    empty = torch.zeros(0, dllm_pipe.vocab_size)
    with torch.no_grad():
        seen = guidance.guided_reward(tokens, nothing, empty, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    texts, visible = decode(tokenizer, tokens)
    reported = guidance.score_texts(texts)
    for name, text, row, keep, a, b in zip(ROWS, texts, tokens, visible, seen, reported):
        mapped = vmap.ids[row[keep]].tolist()
        round_trip = bpe(" " + text, add_special_tokens=False)["input_ids"]  # "text : {response}" -> lead " "
        if name.startswith("exact"):
            assert round_trip == mapped, name
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        else:  # the documented difference: other tokens, so (almost surely) another reward
            assert round_trip != mapped, name
            assert not torch.isclose(a, b, atol=1e-5, rtol=1e-5), name  # beyond the tolerance of equality


class ExactWordsOnly(PipelineCallback):
    """Lets the dLLM propose only whole words whose reward-vocabulary counterpart has the same surface, and eos."""

    tensor_inputs = ["logits"]

    def __init__(self, tokenizer, vmap):
        super().__init__()
        allowed = [tokenizer.convert_tokens_to_ids(w) for w in WORDS if w.isalpha()]
        allowed = [i for i in allowed if vmap.exact[i]] + [tokenizer.eos_token_id]
        self.blocked = torch.ones(len(tokenizer), dtype=torch.bool)
        self.blocked[allowed] = False

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        callback_kwargs["logits"] = callback_kwargs["logits"].masked_fill(self.blocked, float("-inf"))
        return callback_kwargs


def test_aps_rewards_during_a_guided_call_equal_the_reported_rewards(tokenizer, bpe, dllm_pipe):
    vmap = VocabularyMap.from_tokenizers(tokenizer, bpe, source_size=dllm_pipe.vocab_size)
    reward = CausalLMReward(tiny_causal_lm(len(bpe), seed=6), JUDGE)
    guidance = RewardGuidance(reward, bpe, guidance="aps", guidance_steps=2, keep_trace=True)
    out = dllm_pipe(
        ["the cat", "a man and a woman walked to the old city by the sea"],
        callback_on_step_end=MultiPipelineCallbacks([ExactWordsOnly(tokenizer, vmap), guidance]),
        reward_prompt=["food", "war"],
        gen_length=8,
        num_inference_steps=4,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(guidance.trace) == 8
    for entry in guidance.trace:
        assert torch.all(entry["weight"] == 1)  # APS: every masked position is fed its sampled token
        texts, visible = decode(tokenizer, entry["tokens"])
        for text, row, keep in zip(texts, entry["tokens"], visible):
            assert (
                bpe(" " + text if text else "", add_special_tokens=False)["input_ids"] == vmap.ids[row[keep]].tolist()
            )
        torch.testing.assert_close(guidance.score_texts(texts), entry["reward"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.rewards.flatten(), guidance.score_texts(sum(out.all_texts, [])))
