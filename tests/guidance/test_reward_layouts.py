"""Reward templates (named slots), the causal LM likelihood reward and the prefix cache, on tiny models."""

import re

import pytest
import torch
from transformers import BertForSequenceClassification

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance import CausalLMReward, RewardTemplate, RewardTerm
from entrgi_pipelines.guidance.templates import layout_response
from entrgi_pipelines.testing import (
    tiny_bert_config,
    tiny_bpe_tokenizer,
    tiny_causal_lm,
    tiny_decoder_reward_model,
    tiny_masked_lm,
)

JUDGE = RewardTemplate(
    messages=[
        {"role": "user", "content": "what is this text about ? text : {response}"},
        {"role": "assistant", "content": "this text is about {target}"},
    ],
    score="target",
)
# The prompt before the response, the target in the question and scored at the end.
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
RESPONSES = ["the dog ate the bread", "", "a king, and a queen.", "they sang"]


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe_tokenizer()


@pytest.fixture(scope="module")
def lm(bpe):
    return tiny_causal_lm(len(bpe), seed=3)


def wordpiece_pipe(tokenizer):
    model = tiny_masked_lm(len(tokenizer))
    pipe = EntRGiPipeline(model=model, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_ids(tokenizer, template, prompt, target, response):
    """The token ids of the whole rendered input, as a user would tokenise it (the reference).

    An empty response takes the spaces before it along (`"text : "` -> `"text :"`), as the layout does: guidance
    sees no token there either.
    """
    values = {"prompt": prompt, "target": target, "response": response or "\x00"}
    if template.is_default:
        chat = [{"role": "user", "content": target}, {"role": "assistant", "content": values["response"]}]
    else:
        chat = template.render(values)
    text = re.sub(" *\x00", "", tokenizer.apply_chat_template(chat, tokenize=False))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", [RewardTemplate(), JUDGE, WITH_PROMPT], ids=["default", "judge", "with_prompt"])
@pytest.mark.parametrize("which", ["bpe", "wordpiece"])
def test_layout_tokens_are_the_rendered_conversation_split_at_the_response(template, which, bpe, chat_tokenizer):
    tokenizer = bpe if which == "bpe" else chat_tokenizer
    for prompt, target, response in zip(PROMPTS, TARGETS, RESPONSES):
        layout = layout_response(tokenizer, template, prompt, target)
        response_ids = tokenizer(layout.lead + response if response else "", add_special_tokens=False)["input_ids"]
        whole = render_ids(tokenizer, template, prompt, target, response)
        ours = layout.prefix + response_ids + layout.suffix
        if template.score is None:
            assert ours == whole
            assert not any(layout.scored)
        else:  # the input ends with the scored slot: the rest of the conversation is cut
            assert whole[: len(ours)] == ours
            scored = [t for t, s in zip(layout.suffix, layout.scored) if s]
            assert tokenizer.decode(scored).strip() == target
            assert layout.scored == sorted(layout.scored)  # the scored tokens end the suffix
    if which == "bpe" and not template.is_default:
        assert layout.lead == " "  # "text : {response}": the response is read as " they sang" (Ġthey)


def test_template_slots_and_errors(bpe, tokenizer, reward_model):
    assert RewardTemplate.from_any(None).is_default
    assert RewardTemplate.from_any("x {response}") == RewardTemplate(text="x {response}")
    listed = RewardTemplate.from_any([{"role": "user", "content": "{response}"}])
    assert listed.messages == ({"role": "user", "content": "{response}"},)
    # values are inserted once, never re-read as slots
    assert RewardTemplate(text="{target}: {response}").render({"target": "{response}", "response": "r"}) == (
        "{response}: r"
    )
    with pytest.raises(ValueError, match="exactly once"):
        RewardTemplate(text="no slot")
    with pytest.raises(ValueError, match="exactly once"):
        RewardTemplate(text="{response} {response}")
    with pytest.raises(ValueError, match="after"):
        RewardTemplate(text="{target} {response}", score="target")
    with pytest.raises(ValueError, match="`score`"):
        RewardTemplate(text="{response} {target}", score="response")
    with pytest.raises(TypeError, match="reward_template"):
        RewardTemplate.from_any(42)
    with pytest.raises(TypeError, match="messages"):
        RewardTemplate(messages=[{"role": "user"}])
    with pytest.raises(ValueError, match="separated from the response"):
        layout_response(bpe, RewardTemplate(text="{response}{target}", score="target"), "p", "t")
    with pytest.raises(ValueError, match="no chat template"):
        layout_response(tokenizer, JUDGE, "p", "t")  # the plain WordPiece tokenizer has none
    # a plain-text template works without a chat template
    plain = layout_response(tokenizer, RewardTemplate(text="the word : {target} the book : {response}"), "p", "war")
    assert tokenizer.convert_ids_to_tokens(plain.prefix) == ["the", "word", ":", "war", "the", "book", ":"]
    with pytest.raises(ValueError, match="scored slot"):
        CausalLMReward(tiny_causal_lm(len(bpe)), RewardTemplate())
    with pytest.raises(ValueError, match="labels"):
        RewardTerm(reward_model, tokenizer, template=RewardTemplate(text="{response} : {target}", score="target"))
    with pytest.raises(ValueError, match="prefix_cache"):
        RewardTerm(reward_model, tokenizer, prefix_cache=True)  # an encoder has no prefix to cache
    with pytest.raises(ValueError, match="reward_template"):
        RewardGuidance(reward_model, reward_template=[RewardTemplate(), RewardTemplate()])


@pytest.mark.parametrize("template", [JUDGE, WITH_PROMPT], ids=["judge", "with_prompt"])
def test_causal_lm_reward_is_the_mean_log_probability_of_the_scored_tokens(template, bpe, lm):
    term = RewardTerm(CausalLMReward(lm, template), bpe)
    term.prepare(TARGETS, "cpu", PROMPTS)
    with torch.no_grad():
        rewards = term.reward_of_texts(RESPONSES)
        for i, (prompt, target, response) in enumerate(zip(PROMPTS, TARGETS, RESPONSES)):
            layout = layout_response(bpe, template, prompt, target)
            ids = render_ids(bpe, template, prompt, target, response)
            n_scored = sum(layout.scored)
            end = len(ids) - len(bpe("<|im_end|>\n", add_special_tokens=False)["input_ids"])
            log_probs = lm(input_ids=torch.tensor([ids[:end]])).logits[0].log_softmax(-1)
            targets = torch.tensor(ids[end - n_scored : end])
            expected = log_probs[end - n_scored - 1 : end - 1].gather(-1, targets[:, None]).mean()
            torch.testing.assert_close(rewards[i], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["causal_lm", "sequence_classifier"])
def test_prefix_cache_gives_the_uncached_rewards_and_gradients(kind, bpe, lm):
    model = CausalLMReward(lm, WITH_PROMPT) if kind == "causal_lm" else tiny_decoder_reward_model(len(bpe), seed=1)
    cached, uncached = RewardTerm(model, bpe), RewardTerm(model, bpe, prefix_cache=False)
    assert cached.prefix_cache and not uncached.prefix_cache
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, len(bpe), (len(PROMPTS), 9), generator=generator)
    visible = torch.ones_like(tokens, dtype=torch.bool)
    visible[1, 4:] = False  # cut at an end-of-sequence token
    visible[3] = False  # an empty response
    results = []
    for term in (cached, uncached):
        term.prepare(TARGETS, "cpu", PROMPTS)
        embeds = term.embeddings(tokens).detach().requires_grad_(True)
        reward = term.reward(embeds, visible)
        (grad,) = torch.autograd.grad(reward.sum(), embeds)  # to the response only, as guidance does
        results.append((reward.detach(), grad))
    assert cached._context["cache"] is not None and uncached._context["cache"] is None
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-4)
    assert results[0][1][visible].abs().sum() > 0 and results[0][1][~visible].abs().sum() == 0


def test_pipeline_guides_with_a_template_and_a_causal_lm_reward(tokenizer, bpe, lm):
    pipe = wordpiece_pipe(tokenizer)
    reward = CausalLMReward(lm, JUDGE)
    kwargs = dict(
        reward_model=reward,
        reward_tokenizer=bpe,
        reward_prompt=["food", "war"],
        gen_length=6,
        num_inference_steps=3,
        num_samples_per_prompt=2,
        guidance="entrgi",
        guidance_steps=1,
    )
    out = pipe(["the cat", "a dog"], generator=torch.Generator().manual_seed(0), **kwargs)
    assert out.rewards.shape == (2, 2) and bool((out.rewards <= 0).all())
    # the reward prompt fills {target}: the reported rewards are the template's, recomputed here
    term = RewardTerm(reward, bpe)
    term.prepare(["food", "food", "war", "war"], "cpu")
    with torch.no_grad():
        torch.testing.assert_close(out.rewards.flatten(), term.reward_of_texts(sum(out.all_texts, [])))
    # a template given to the call replaces the reward model's own, and needs `reward_model=`
    other = RewardTemplate(text="{response} . this is about {target}", score="target")
    again = pipe(["the cat", "a dog"], generator=torch.Generator().manual_seed(0), reward_template=other, **kwargs)
    assert not torch.allclose(again.rewards, out.rewards)
    with pytest.raises(ValueError, match="reward_template"):
        pipe("the cat", reward_template=other, callback_on_step_end=RewardGuidance(reward, bpe), gen_length=2)


def test_guided_call_is_the_same_with_and_without_the_prefix_cache(tokenizer, bpe, lm):
    pipe = wordpiece_pipe(tokenizer)
    outs = []
    for prefix_cache in (None, False):
        guidance = RewardGuidance(
            CausalLMReward(lm, WITH_PROMPT), bpe, guidance="aps", guidance_steps=2, prefix_cache=prefix_cache
        )
        outs.append(
            pipe(
                ["the cat", "why"],
                callback_on_step_end=guidance,
                gen_length=6,
                num_inference_steps=3,
                num_samples_per_prompt=2,
                generator=torch.Generator().manual_seed(4),
            )
        )
        assert guidance.terms[0].prefix_cache is (prefix_cache is None)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    torch.testing.assert_close(outs[0].rewards, outs[1].rewards, atol=1e-5, rtol=1e-5)


def test_encoder_reward_keeps_the_text_pair_layout(tokenizer):
    model = BertForSequenceClassification(tiny_bert_config(len(tokenizer), num_labels=1)).eval()
    term = RewardTerm(model, tokenizer)
    assert term.template.is_default and not term.prefix_cache
    term.prepare(["the cat"], "cpu")
    with torch.no_grad():
        direct = model(**tokenizer("the cat", "a dog sat", return_tensors="pt")).logits[0, 0]
        torch.testing.assert_close(term.reward_of_texts(["a dog sat"])[0], direct, atol=1e-5, rtol=1e-5)
