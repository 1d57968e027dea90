import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from transformers import BertForSequenceClassification

from entrgi_pipelines import RewardGuidance, VocabularyMap
from entrgi_pipelines.guidance.rewards import as_differentiable_reward, visible_before_eos
from entrgi_pipelines.testing import WORDS, tiny_bert_config, tiny_wordpiece_tokenizer

PROMPTS = ["the cat", "a man and a woman walked to the old city by the sea", "why"]


class WholeWordsOnly(PipelineCallback):
    """Lets the model propose only whole words and end-of-sequence, so that responses round-trip through text."""

    tensor_inputs = ["logits"]

    def __init__(self, tokenizer):
        super().__init__()
        allowed = [tokenizer.convert_tokens_to_ids(w) for w in WORDS if w.isalpha()] + [tokenizer.eos_token_id]
        self.blocked = torch.ones(len(tokenizer), dtype=torch.bool)
        self.blocked[allowed] = False

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        callback_kwargs["logits"] = callback_kwargs["logits"].masked_fill(self.blocked, float("-inf"))
        return callback_kwargs


def decode(tokenizer, tokens):
    visible = visible_before_eos(tokens, tokenizer.eos_token_id)
    return [
        t.strip()
        for t in tokenizer.batch_decode(torch.where(visible, tokens, tokenizer.pad_token_id), skip_special_tokens=True)
    ]


@pytest.mark.parametrize("kind", ["encoder_text_pair", "decoder_chat_template"])
def test_reward_seen_in_guidance_equals_reported_reward_for_the_same_tokens(
    pipe, tokenizer, chat_tokenizer, reward_model, decoder_reward_model, kind
):
    rm, rm_tokenizer = (
        (reward_model, tokenizer) if kind == "encoder_text_pair" else (decoder_reward_model, chat_tokenizer)
    )
    guidance = RewardGuidance(rm, rm_tokenizer, guidance="aps", guidance_steps=2, keep_trace=True)
    out = pipe(
        PROMPTS,
        callback_on_step_end=MultiPipelineCallbacks([WholeWordsOnly(tokenizer), guidance]),
        gen_length=10,
        num_inference_steps=5,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(guidance.trace) == 10  # 5 steps x 2 Adam steps
    saw_eos = False
    for entry in guidance.trace:
        assert torch.all(entry["weight"] == 1)  # APS is EntRGi with w = 1 at every masked position
        texts = decode(tokenizer, entry["tokens"])
        # the responses round-trip through the reward tokenizer
        visible = visible_before_eos(entry["tokens"], tokenizer.eos_token_id)
        for row, text in zip(range(len(texts)), texts):
            assert tokenizer(text, add_special_tokens=False)["input_ids"] == entry["tokens"][row][visible[row]].tolist()
        saw_eos |= bool((~visible).any())
        torch.testing.assert_close(guidance.score_texts(texts), entry["reward"], atol=1e-5, rtol=1e-5)
    assert saw_eos, "the check should cover responses cut at end-of-sequence"
    torch.testing.assert_close(out.rewards.flatten(), guidance.score_texts(sum(out.all_texts, [])))


def test_reported_reward_is_what_the_reward_model_gives_the_text_as_a_user_would(
    pipe, tokenizer, reward_model, chat_tokenizer, decoder_reward_model
):
    out = pipe(
        PROMPTS,
        reward_model=reward_model,
        guidance="none",
        gen_length=6,
        num_inference_steps=3,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(1),
    )
    for b, prompt in enumerate(PROMPTS):
        for k, text in enumerate(out.all_texts[b]):
            direct = reward_model(**tokenizer(prompt, text, return_tensors="pt")).logits[0, 0]
            torch.testing.assert_close(out.rewards[b, k], direct, atol=1e-5, rtol=1e-5)
    out = pipe(
        PROMPTS,
        reward_model=decoder_reward_model,
        reward_tokenizer=chat_tokenizer,
        guidance="none",
        gen_length=6,
        num_inference_steps=3,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(1),
    )
    for b, prompt in enumerate(PROMPTS):
        for k, text in enumerate(out.all_texts[b]):
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
            rendered = chat_tokenizer.apply_chat_template(chat, tokenize=False)
            ids = chat_tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"]
            direct = decoder_reward_model(input_ids=ids).logits[0, 0]
            torch.testing.assert_close(out.rewards[b, k], direct, atol=1e-5, rtol=1e-5)


def test_weighted_sum_of_reward_models(pipe, tokenizer, reward_model, decoder_reward_model, chat_tokenizer):
    guidance = RewardGuidance(
        [reward_model, decoder_reward_model],
        [tokenizer, chat_tokenizer],
        reward_weights=[1.0, -0.5],
        guidance="entrgi",
        guidance_steps=1,
    )
    both = pipe(
        PROMPTS,
        callback_on_step_end=guidance,
        gen_length=6,
        num_inference_steps=3,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(2),
    )
    texts = sum(both.all_texts, [])
    first = RewardGuidance(reward_model, tokenizer)
    second = RewardGuidance(decoder_reward_model, chat_tokenizer)
    for g in (first, second):
        g.prepare(pipe, [p for p in PROMPTS for _ in range(2)])
    expected = first.score_texts(texts) - 0.5 * second.score_texts(texts)
    torch.testing.assert_close(both.rewards.flatten(), expected, atol=1e-5, rtol=1e-5)


def test_callable_reward_with_input_embeddings(pipe, tokenizer):
    class MeanFeature(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(len(tokenizer), 4)

        def get_input_embeddings(self):
            return self.embed

        def forward(self, inputs_embeds, attention_mask):
            return (inputs_embeds[..., 0] * attention_mask).sum(-1)

    out = pipe(
        "the cat",
        reward_model=MeanFeature(),
        guidance="aps",
        gen_length=5,
        num_inference_steps=3,
        num_samples_per_prompt=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.rewards.shape == (1, 3) and torch.isfinite(out.rewards).all()


def test_reward_model_errors_name_the_argument(tokenizer):
    with pytest.raises(TypeError, match="reward_model.*get_input_embeddings"):
        as_differentiable_reward(lambda embeds, mask: embeds.sum())
    two_labels = BertForSequenceClassification(tiny_bert_config(len(tokenizer), num_labels=2))
    with pytest.raises(ValueError, match="num_labels"):
        as_differentiable_reward(two_labels)


def test_mismatched_embedding_sizes_are_refused(pipe, tokenizer):
    small = BertForSequenceClassification(tiny_bert_config(len(tokenizer) - 10, num_labels=1))
    with pytest.raises(ValueError, match="embedding matrix"):
        pipe("the cat", reward_model=small, gen_length=4, num_inference_steps=2, num_samples_per_prompt=1)


def test_vocabulary_map_between_different_tokenizers(tokenizer):
    other = tiny_wordpiece_tokenizer()
    # a reward vocabulary with another order and without some words
    vocab = other.get_vocab()
    assert VocabularyMap.from_tokenizers(tokenizer, other).coverage == 1.0
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    kept = sorted((t for t in vocab if t not in {"cat", "dog", "##ing"}), reverse=True)
    backend = Tokenizer(WordPiece({t: i for i, t in enumerate(kept)}, unk_token="[UNK]"))
    target = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[SEP]")
    vmap = VocabularyMap.from_tokenizers(tokenizer, target)
    assert vmap.coverage == pytest.approx(1 - 3 / len(tokenizer))
    the = tokenizer.convert_tokens_to_ids("the")
    assert target.convert_ids_to_tokens(int(vmap.ids[the])) == "the"
    cat = tokenizer.convert_tokens_to_ids("cat")
    assert not vmap.mapped[cat] and vmap.ids[cat] == target.unk_token_id
    assert VocabularyMap.from_tokenizers(tokenizer, target, unmapped=7).ids[cat] == 7
    assert VocabularyMap.from_tokenizers(tokenizer, target, unmapped="eos").ids[cat] == target.eos_token_id
    with pytest.raises(ValueError, match="unmapped"):
        VocabularyMap.from_tokenizers(tokenizer, target, unmapped="error")
    with pytest.raises(ValueError, match="unmapped"):
        VocabularyMap.from_tokenizers(tokenizer, target, unmapped="drop")


def test_guidance_reports_vocab_coverage(pipe, reward_model):
    guidance = RewardGuidance(reward_model)
    pipe("the cat", callback_on_step_end=guidance, gen_length=4, num_inference_steps=2, num_samples_per_prompt=1)
    assert guidance.vocab_coverage == [1.0]
