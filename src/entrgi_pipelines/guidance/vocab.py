"""Mapping a diffusion model's vocabulary onto a reward model's."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

UNMAPPED_POLICIES = ("unk", "eos", "pad", "error")


def _canonical(token: str, style: str) -> tuple[str, bool]:
    """(text, starts a word) of a vocabulary entry, so that WordPiece, SentencePiece and byte-level BPE compare."""
    if style == "wordpiece":
        return (token[2:], False) if token.startswith("##") else (token, True)
    marker = "▁" if style == "sentencepiece" else "Ġ"
    return (token[1:], True) if token.startswith(marker) else (token, False)


def _style(vocab: dict[str, int]) -> str:
    counts = {
        "wordpiece": sum(t.startswith("##") for t in vocab),
        "sentencepiece": sum(t.startswith("▁") for t in vocab),
        "bytelevel": sum(t.startswith("Ġ") for t in vocab),
    }
    return max(counts, key=counts.get)


@dataclass
class VocabularyMap:
    """
    For every token id of a source (diffusion model) vocabulary, the id of the same token in a target (reward model)
    vocabulary.

    Args:
        ids (`torch.LongTensor` of shape `(source_vocab_size,)`): the target id of each source id.
        mapped (`torch.BoolTensor` of shape `(source_vocab_size,)`): whether the source token has a counterpart; the
            others were sent where the `unmapped` policy said.
    """

    ids: torch.LongTensor
    mapped: torch.BoolTensor

    @property
    def coverage(self) -> float:
        """The fraction of source tokens that have a counterpart in the target vocabulary."""
        return float(self.mapped.float().mean())

    @classmethod
    def identity(cls, size: int) -> VocabularyMap:
        return cls(ids=torch.arange(size), mapped=torch.ones(size, dtype=torch.bool))

    @classmethod
    def from_tokenizers(cls, source, target, unmapped: str | int = "unk", source_size: int | None = None):
        """
        Matches tokens by their text (word-start markers of WordPiece, SentencePiece and byte-level BPE made
        comparable); special tokens are matched by role (eos, pad, bos, unk, cls, sep).

        Args:
            source: the diffusion model's tokenizer.
            target: the reward model's tokenizer.
            unmapped (`str` or `int`, defaults to `"unk"`): what a source token without a counterpart becomes:
                `"unk"`, `"eos"` or `"pad"` (the target's token of that role), a target token id, or `"error"` to
                refuse a map whose coverage is below 1.
            source_size (`int`, *optional*): the diffusion model's vocabulary size when it exceeds the tokenizer's
                (padded embedding matrices); the extra ids are unmapped.
        """
        source_vocab, target_vocab = source.get_vocab(), target.get_vocab()
        size = max(source_size or 0, len(source), max(source_vocab.values()) + 1)
        target_size = max(len(target), max(target_vocab.values()) + 1)
        if source_vocab == target_vocab and size <= target_size:
            return cls.identity(size)
        if isinstance(unmapped, str) and unmapped not in UNMAPPED_POLICIES:
            raise ValueError(f"`unmapped` must be one of {UNMAPPED_POLICIES} or a token id, got {unmapped!r}.")
        if isinstance(unmapped, int):
            fallback = unmapped
        elif unmapped == "error":
            fallback = -1
        else:
            fallback = getattr(target, f"{unmapped}_token_id", None)
            if fallback is None:
                raise ValueError(
                    f"`unmapped={unmapped!r}` but the reward tokenizer has no {unmapped} token: pass a token id, "
                    "or another policy."
                )
        if source_vocab == target_vocab:
            # The same tokenizer over a padded embedding matrix: the ids past the tokenizer have no counterpart.
            known = torch.arange(size) < target_size
            if unmapped == "error":
                raise ValueError(
                    f"{size - target_size} ids of the diffusion model ({size}) are past its tokenizer ({target_size}) "
                    "and have no counterpart; choose an `unmapped` policy (e.g. 'unk') to send them somewhere."
                )
            return cls(ids=torch.where(known, torch.arange(size), fallback), mapped=known)
        source_style, target_style = _style(source_vocab), _style(target_vocab)
        by_text = {_canonical(tok, target_style): i for tok, i in target_vocab.items()}
        ids = torch.full((size,), fallback, dtype=torch.long)
        mapped = torch.zeros(size, dtype=torch.bool)
        for tok, i in source_vocab.items():
            j = by_text.get(_canonical(tok, source_style))
            if j is not None:
                ids[i], mapped[i] = j, True
        # One token may hold several roles (GPT-2's <|endoftext|> is eos, bos, unk and pad): the first role wins,
        # so that the end of a response stays an end of sequence for the reward model.
        by_role: set[int] = set()
        for role in ("eos", "pad", "bos", "unk", "cls", "sep"):
            i, j = getattr(source, f"{role}_token_id", None), getattr(target, f"{role}_token_id", None)
            if i is not None and j is not None and i not in by_role:
                ids[i], mapped[i] = j, True
                by_role.add(i)
        result = cls(ids=ids, mapped=mapped)
        if unmapped == "error" and result.coverage < 1:
            raise ValueError(
                f"Only {result.coverage:.1%} of the diffusion vocabulary maps onto the reward vocabulary; choose an "
                "`unmapped` policy (e.g. 'unk') to send the rest somewhere."
            )
        logger.info("Vocabulary map covers %.2f%% of the diffusion model's tokens.", 100 * result.coverage)
        return result
