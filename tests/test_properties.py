"""Property tests (hypothesis) of the scheduler, the vocabulary map and the EntRGi mixing.

- `MaskedDiffusionScheduler`: for random shapes, steps, confidence rules and sampling settings, every step commits
  the scheduled count (a rounding of `n_masked * (1 - t_{i+1} / t_i)`, all at the last step; `origin` commits a
  random number), the most confident first, never changes a committed token, commits end-of-sequence candidates
  last (`eos_last=True`), and nothing is masked after the last step.
- `VocabularyMap.from_tokenizers`: for any pair of the test tokenizers (tiny WordPiece, a byte-level BPE and a
  SentencePiece-style Unigram trained here), every id lands in the reward vocabulary, and an exact match decodes to
  the same text in running text.
- `entrgi_embeddings`: the value is `(1 - w) soft + w hard` and the gradient flows to `soft` alone, for any `w` in
  [0, 1].
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers.implementations import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer
from transformers import PreTrainedTokenizerFast

from entrgi_pipelines import MaskedDiffusionScheduler, VocabularyMap, entrgi_embeddings
from entrgi_pipelines.schedulers.scheduling_masked_diffusion import CONFIDENCE_RULES
from entrgi_pipelines.testing import WORDS, tiny_wordpiece_tokenizer

# Modest budgets keep the file at about 15 s on one CPU thread; derandomized, so that CI runs are reproducible.
PROPERTY_SETTINGS = settings(
    max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

# Scheduler


@st.composite
def scheduler_cases(draw):
    vocab = draw(st.integers(3, 40))
    mask, eos = draw(st.lists(st.integers(0, vocab - 1), min_size=2, max_size=2, unique=True))
    return {
        "batch": draw(st.integers(1, 4)),
        "length": draw(st.integers(1, 24)),
        "vocab": vocab,
        "steps": draw(st.integers(1, 12)),
        "confidence": draw(st.sampled_from(CONFIDENCE_RULES)),
        "eos_last": draw(st.booleans()),
        "mask": mask,
        "eos": draw(st.sampled_from([eos, None])),
        "eos_bias": draw(st.floats(0.0, 6.0)),  # makes end-of-sequence candidates common
        "scale": draw(st.floats(0.1, 8.0)),
        "blocked": draw(st.floats(0.0, 0.7)),  # share of tokens a model rules out with -inf logits
        "committed": draw(st.floats(0.0, 0.5)),  # share of positions fixed before the first step (infilling)
        "unguided_confidence": draw(st.booleans()),  # confidences from other logits, as the pipeline passes them
        "temperature": draw(st.floats(0.3, 2.0)),
        "top_p": draw(st.one_of(st.none(), st.floats(0.3, 1.0))),
        "top_k": draw(st.one_of(st.none(), st.integers(1, vocab))),
        "seed": draw(st.integers(0, 2**16)),
    }


def random_logits(case: dict, generator: torch.Generator) -> torch.Tensor:
    shape = (case["batch"], case["length"], case["vocab"])
    logits = torch.randn(shape, generator=generator) * case["scale"]
    blocked = torch.rand(shape, generator=generator) < case["blocked"]
    blocked[..., case["eos"] if case["eos"] is not None else (case["mask"] + 1) % case["vocab"]] = False
    logits = logits.masked_fill(blocked, float("-inf"))
    if case["eos"] is not None:
        logits[..., case["eos"]] += case["eos_bias"]
    return logits


def scheduled_count(masked: int, step: int, steps: int, eps: float) -> float:
    """`n_masked * (1 - t_{i+1} / t_i)` with `t = linspace(1, eps, T + 1)`, in float64 (all at the last step)."""
    if step == steps - 1:
        return float(masked)
    t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    return masked * float(1.0 - t[step + 1] / t[step])


@PROPERTY_SETTINGS
@given(case=scheduler_cases())
def test_scheduler_commits_the_scheduled_count_most_confident_first_and_eos_last(case):
    scheduler = MaskedDiffusionScheduler(confidence=case["confidence"], eos_last=case["eos_last"])
    scheduler.set_timesteps(case["steps"])
    generator = torch.Generator().manual_seed(case["seed"])
    sample = torch.full((case["batch"], case["length"]), case["mask"])
    fixed = torch.rand(sample.shape, generator=generator) < case["committed"]
    fixed_tokens = torch.randint(0, case["vocab"], sample.shape, generator=generator)
    fixed_tokens[fixed_tokens == case["mask"]] = (case["mask"] + 1) % case["vocab"]
    sample = torch.where(fixed, fixed_tokens, sample)
    ranked = case["confidence"] != "origin"

    for step, t in enumerate(scheduler.timesteps):
        logits = random_logits(case, generator)
        unguided = random_logits(case, generator) if case["unguided_confidence"] else None
        out = scheduler.step(
            logits,
            t,
            sample,
            mask_token_id=case["mask"],
            confidence_logits=unguided,
            temperature=case["temperature"],
            top_p=case["top_p"],
            top_k=case["top_k"],
            eos_token_id=case["eos"],
            generator=generator,
        )
        masked = sample == case["mask"]
        commit, candidates = out.commit_mask, out.sampled_tokens
        # A committed token never changes; a committed position gets its candidate; the rest stays masked.
        assert torch.equal(out.prev_sample[~masked], sample[~masked])
        assert not (commit & ~masked).any()
        assert torch.equal(out.prev_sample[commit], candidates[commit])
        assert (out.prev_sample[masked & ~commit] == case["mask"]).all()
        assert not (candidates[masked] == case["mask"]).any()
        assert not torch.isinf(logits.gather(-1, candidates[..., None]).squeeze(-1)[masked]).any()  # never blocked

        for row in range(case["batch"]):
            n, k = int(masked[row].sum()), int(commit[row].sum())
            expected = scheduled_count(n, step, case["steps"], scheduler.config.eps)
            if ranked or step == case["steps"] - 1:
                assert abs(k - expected) <= 0.5 + 1e-6, (step, n, k, expected)
            if not ranked or k == 0 or k == n:
                continue
            # The most confident first (the confidence already carries the end-of-sequence penalty).
            confidence = out.confidence[row]
            assert confidence[commit[row]].min() >= confidence[masked[row] & ~commit[row]].max()
            if case["eos_last"] and case["eos"] is not None:
                is_eos = candidates[row] == case["eos"]
                # an end-of-sequence candidate is committed only once no other candidate is left waiting
                if (commit[row] & is_eos).any():
                    assert not (masked[row] & ~commit[row] & ~is_eos).any()
        sample = out.prev_sample

    assert not (sample == case["mask"]).any()
    assert torch.equal(sample[fixed], fixed_tokens[fixed])


# Vocabulary map


def _training_text() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choices(WORDS, k=12)) for _ in range(300)]


def byte_level_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE of 400 tokens, `<|endoftext|>` for every special role."""
    backend = ByteLevelBPETokenizer()
    backend.train_from_iterator(
        _training_text(), vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=backend._tokenizer, eos_token=special, unk_token=special, pad_token=special, bos_token=special
    )


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style (`▁` word starts) cased Unigram tokenizer of about 250 tokens."""
    backend = SentencePieceUnigramTokenizer()
    text = [line.capitalize() for line in _training_text()]
    backend.train_from_iterator(
        text, vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend._tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {
        "wordpiece": tiny_wordpiece_tokenizer(),
        "wordpiece_chat": tiny_wordpiece_tokenizer(chat_template=True),
        "bytelevel_bpe": byte_level_bpe_tokenizer(),
        "unigram": unigram_tokenizer(),
    }


def vocab_size(tokenizer) -> int:
    return max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)


def in_running_text(tokenizer, token_id: int) -> str:
    """How a token reads after the word "the" (decoded by the tokenizer itself), without the leading space."""
    the = next(i for tok, i in tokenizer.get_vocab().items() if tok in ("the", "Ġthe", "▁the"))
    return tokenizer.decode([the, token_id]).strip()


TOKENIZER_NAMES = ["wordpiece", "wordpiece_chat", "bytelevel_bpe", "unigram"]


@PROPERTY_SETTINGS
@given(
    pair=st.tuples(st.sampled_from(TOKENIZER_NAMES), st.sampled_from(TOKENIZER_NAMES)),
    padding=st.sampled_from([0, 0, 3, 16]),
    unmapped=st.sampled_from(["unk", "eos", "pad", "id"]),
    approximate=st.booleans(),
    data=st.data(),
)
def test_vocabulary_map_lands_in_the_reward_vocabulary(tokenizers, pair, padding, unmapped, approximate, data):
    source, target = tokenizers[pair[0]], tokenizers[pair[1]]
    target_size = vocab_size(target)
    if unmapped == "id":
        unmapped = data.draw(st.integers(0, target_size - 1), label="unmapped id")
    size = vocab_size(source) + padding
    vocab_map = VocabularyMap.from_tokenizers(
        source, target, unmapped=unmapped, source_size=size, approximate=approximate
    )

    assert vocab_map.ids.shape == vocab_map.mapped.shape == (size,)
    assert vocab_map.ids.dtype == torch.long
    assert 0 <= int(vocab_map.ids.min()) and int(vocab_map.ids.max()) < target_size
    # ids beyond the tokenizer (padded embedding rows) have no counterpart
    assert not vocab_map.mapped[vocab_size(source) :].any()
    fallback = unmapped if isinstance(unmapped, int) else getattr(target, f"{unmapped}_token_id")
    assert (vocab_map.ids[~vocab_map.mapped] == fallback).all()
    if source.eos_token_id is not None and target.eos_token_id is not None:
        assert int(vocab_map.ids[source.eos_token_id]) in (target.eos_token_id, target.sep_token_id)
    if source.get_vocab() == target.get_vocab():
        assert torch.equal(vocab_map.ids[: vocab_size(source)], torch.arange(vocab_size(source)))

    # An exact counterpart reads the same in running text (decoded by each tokenizer itself).
    special = set(source.all_special_ids)
    exact = [i for i in vocab_map.exact.nonzero().flatten().tolist() if i not in special and i < len(source)]
    for i in data.draw(st.lists(st.sampled_from(exact), min_size=1, max_size=20), label="exact") if exact else []:
        assert in_running_text(source, i) == in_running_text(target, int(vocab_map.ids[i])), source.decode([i])


@PROPERTY_SETTINGS
@given(pair=st.tuples(st.sampled_from(TOKENIZER_NAMES), st.sampled_from(TOKENIZER_NAMES)))
def test_vocabulary_map_error_policy_refuses_or_covers_everything(tokenizers, pair):
    source, target = tokenizers[pair[0]], tokenizers[pair[1]]
    try:
        vocab_map = VocabularyMap.from_tokenizers(source, target, unmapped="error")
    except ValueError as error:
        assert "unmapped" in str(error)
    else:
        assert vocab_map.coverage == 1.0 and int(vocab_map.ids.max()) < vocab_size(target)


# EntRGi mixing


@st.composite
def mixing_cases(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    return {
        "shape": shape,
        "dim": draw(st.integers(1, 8)),
        "weight": draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))),
        "per_row": draw(st.booleans()),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "seed": draw(st.integers(0, 2**16)),
    }


@PROPERTY_SETTINGS
@given(case=mixing_cases())
def test_entrgi_embeddings_value_is_the_mixture_and_the_gradient_goes_to_soft_alone(case):
    generator = torch.Generator().manual_seed(case["seed"])
    shape, dtype = (*case["shape"], case["dim"]), case["dtype"]
    soft = (torch.randn(shape, generator=generator, dtype=dtype) * 3).requires_grad_(True)
    hard = torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(True)
    if case["per_row"]:  # a different w per position, the ends included
        weight = torch.rand(case["shape"], generator=generator)
        weight.view(-1)[0] = case["weight"]
    else:
        weight = torch.full(case["shape"], case["weight"])
    weight.requires_grad_(True)

    mixed = entrgi_embeddings(soft, hard, weight)
    w = weight.detach()[..., None].to(dtype)
    expected = (1 - w) * soft.detach() + w * hard.detach()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(mixed.detach(), expected, atol=tolerance, rtol=tolerance)
    assert mixed.dtype == dtype and mixed.shape == soft.shape

    upstream = torch.randn(shape, generator=generator, dtype=dtype)
    (mixed * upstream).sum().backward()
    assert torch.equal(soft.grad, upstream)  # d mixed / d soft is the identity, whatever w is
    assert hard.grad is None and weight.grad is None  # no gradient through the hard token or the weight


def test_guidance_works_when_the_dllm_pads_its_vocabulary_past_a_shared_tokenizer():
    # Found by the property above: with the same tokenizer, a padded dLLM vocabulary used to map its extra ids past
    # the reward model's embedding matrix, and guidance refused the pair.
    from entrgi_pipelines import EntRGiPipeline
    from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model

    tokenizer = tiny_wordpiece_tokenizer()
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer) + 9), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "the cat",
        reward_model=tiny_reward_model(len(tokenizer)),
        num_inference_steps=2,
        gen_length=4,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out.rewards).all() and out.sequences.shape == (1, 2, 4)
