"""Mapping a diffusion model's vocabulary onto a reward model's.

Tokens are matched by their *surface*: the text a token adds to running text and whether a space comes before it.
For byte-level BPE (`Ġword`) and SentencePiece (`▁word`) the marker says it. For WordPiece the marker (`##`) does not
tell the whole story (BERT's decoder also glues `,` `.` `!` `?` to the previous word), so whether a word-start
WordPiece token gets a space is read from the tokenizer's own decoder, the way the pipeline decodes responses:
`decode([word, token])`.

A token without a counterpart of the same surface may get an approximate one (`approximate=True`, the default): the
same text in another casing (an uncased `israel` -> `ĠIsrael`), then the same text with the other spacing. `mapped`
marks every token with a counterpart, `exact` those whose counterpart has the same surface.

A token with no counterpart at all goes where the `unmapped` policy says. The default, `"auto"`, works for every
pair of tokenizers: the reward tokenizer's unknown token, else its padding token, else its end-of-sequence token.
Qwen-style tokenizers have no unknown token (`unk_token: null`), so between Dream's and a Qwen3 reward model's the
unmapped rows (Dream's `<|mask|>` and `<|beginoftext|>`, and the padded embedding rows past its tokenizer) become
the reward's padding token `<|endoftext|>`. None of them can change a reported reward: the pipeline never proposes
the mask (its logit is `-inf`), and the reported rewards are computed on the decoded text, from which special
tokens are dropped and ids past the tokenizer decode to nothing. During guidance such a row only stands in where the
dLLM puts probability on it, as the unknown token stood in before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..validation import check_integer

logger = logging.getLogger(__name__)

UNMAPPED_POLICIES = ("auto", "unk", "eos", "pad", "error")
# What `"auto"` tries, in order: the first role the reward tokenizer has a token for.
AUTO_FALLBACK_ROLES = ("unk", "pad", "eos")


def _canonical(token: str, style: str) -> tuple[str, bool]:
    """(text, starts a word) of a vocabulary entry, so that WordPiece, SentencePiece and byte-level BPE compare."""
    if style == "wordpiece":
        return (token[2:], False) if token.startswith("##") else (token, True)
    marker = "▁" if style == "sentencepiece" else "Ġ"
    return (token[1:], True) if token.startswith(marker) else (token, False)


def token_surfaces(tokenizer, vocab: dict[str, int] | None = None) -> dict[int, tuple[str, bool]]:
    """`{id: (text, space before)}`: what each token adds to running text (special tokens are left out).

    From the word-start marker (`Ġ`, `▁`, `##`); for WordPiece, a word-start token that the tokenizer's decoder glues
    to the previous word (`decode([word, token], skip_special_tokens=True)` has no space: `,` `.` `!` `?` in BERT's
    decoder) has no space before it.
    """
    vocab = tokenizer.get_vocab() if vocab is None else vocab
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    style = _style(vocab)
    surfaces = {i: _canonical(tok, style) for tok, i in vocab.items() if i not in special}
    if style != "wordpiece":
        return surfaces
    anchor = next((tok for tok in ("the", "a", "and") if tok in vocab), None) or next(
        tok for tok in sorted(vocab, key=vocab.get) if tok.isalpha() and vocab[tok] not in special
    )
    anchor_text = tokenizer.decode([vocab[anchor]], skip_special_tokens=True)
    words = sorted(i for i, (_, space) in surfaces.items() if space)
    decoded = tokenizer.batch_decode([[vocab[anchor], i] for i in words], skip_special_tokens=True)
    for i, text in zip(words, decoded):
        if text.startswith(anchor_text) and text[len(anchor_text) :][:1] not in ("", " "):
            surfaces[i] = (surfaces[i][0], False)
    return surfaces


def _variants(text: str, space: bool):
    """The approximate counterparts to try, best first: other casings, then the other spacing."""
    casings = list(dict.fromkeys((text.lower(), text.capitalize(), text.upper(), text.title())))
    for spacing in (space, not space):
        for casing in casings:
            if (casing, spacing) != (text, space):
                yield casing, spacing


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
        exact (`torch.BoolTensor` of shape `(source_vocab_size,)`, *optional*): whether the counterpart has the same
            surface (defaults to `mapped`).
        unmapped_id (`int`, *optional*): the target id the tokens without a counterpart became (`None` when every
            token has one).
        unmapped_token (`str`, *optional*): that target token, as text (e.g. `"<|endoftext|>"`).
    """

    ids: torch.LongTensor
    mapped: torch.BoolTensor
    exact: torch.BoolTensor | None = None
    unmapped_id: int | None = None
    unmapped_token: str | None = None

    def __post_init__(self):
        if self.exact is None:
            self.exact = self.mapped.clone()

    @property
    def coverage(self) -> float:
        """The fraction of source tokens that have a counterpart in the target vocabulary."""
        return float(self.mapped.float().mean())

    @property
    def exact_coverage(self) -> float:
        """The fraction of source tokens whose counterpart has the same surface (text and spacing)."""
        return float(self.exact.float().mean())

    @classmethod
    def identity(cls, size: int) -> VocabularyMap:
        check_integer("size", size, minimum=1)
        return cls(ids=torch.arange(size), mapped=torch.ones(size, dtype=torch.bool))

    @classmethod
    def from_tokenizers(
        cls,
        source,
        target,
        unmapped: str | int = "auto",
        source_size: int | None = None,
        approximate: bool = True,
    ):
        """
        Matches tokens by their surface: text, and whether a space comes before it (see the module docstring);
        special tokens by their string, else by role (eos, pad, bos, unk, cls, sep).

        Args:
            source: the diffusion model's tokenizer.
            target: the reward model's tokenizer.
            unmapped (`str` or `int`, defaults to `"auto"`): what a source token without a counterpart becomes:
                `"auto"` (the target's unknown token, else its padding token, else its end-of-sequence token: see
                the module docstring), `"unk"`, `"eos"` or `"pad"` (the target's token of that role), a target token
                id, or `"error"` to refuse a map whose coverage is below 1.
            source_size (`int`, *optional*): the diffusion model's vocabulary size when it exceeds the tokenizer's
                (padded embedding matrices); the extra ids are unmapped.
            approximate (`bool`, defaults to `True`): give a token without an exact counterpart the same text in
                another casing, else with the other spacing (`mapped` but not `exact`).
        """
        for name, tokenizer in (("source", source), ("target", target)):
            if not callable(getattr(tokenizer, "get_vocab", None)):
                raise TypeError(f"`{name}` must be a tokenizer (with `get_vocab()`), got {type(tokenizer).__name__}.")
        if not (unmapped in UNMAPPED_POLICIES or isinstance(unmapped, int) and not isinstance(unmapped, bool)):
            raise ValueError(f"`unmapped` must be one of {UNMAPPED_POLICIES} or a token id, got {unmapped!r}.")
        check_integer("source_size", source_size, minimum=1, none_ok=True)
        source_vocab, target_vocab = source.get_vocab(), target.get_vocab()
        size = max(source_size or 0, len(source), max(source_vocab.values()) + 1)
        target_size = max(len(target), max(target_vocab.values()) + 1)
        if isinstance(unmapped, int) and not 0 <= unmapped < target_size:
            raise ValueError(
                f"`unmapped={unmapped}` is not a token id of the reward tokenizer ({target_size} tokens): pass an id "
                f"in range, or a policy among {UNMAPPED_POLICIES}."
            )
        if source_vocab == target_vocab and size <= target_size:
            return cls.identity(size)
        if isinstance(unmapped, str) and unmapped not in UNMAPPED_POLICIES:
            raise ValueError(f"`unmapped` must be one of {UNMAPPED_POLICIES} or a token id, got {unmapped!r}.")
        if isinstance(unmapped, int):
            fallback = unmapped
        elif unmapped == "error":
            fallback = -1
        elif unmapped == "auto":
            roles = (getattr(target, f"{role}_token_id", None) for role in AUTO_FALLBACK_ROLES)
            fallback = next((i for i in roles if i is not None), None)
            if fallback is None:
                raise ValueError(
                    "`unmapped='auto'` but the reward tokenizer has no unk, pad or eos token: pass a token id of the "
                    "reward tokenizer as `unmapped` (`unmapped_tokens` of RewardGuidance)."
                )
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
                    "and have no counterpart; choose an `unmapped` policy (e.g. 'auto') to send them somewhere."
                )
            return cls(
                ids=torch.where(known, torch.arange(size), fallback), mapped=known, **_unmapped(target, fallback, known)
            )
        by_surface: dict[tuple[str, bool], int] = {}
        for j, surface in sorted(token_surfaces(target, target_vocab).items()):
            by_surface.setdefault(surface, j)  # the lowest id wins a tie
        ids = torch.full((size,), fallback, dtype=torch.long)
        mapped = torch.zeros(size, dtype=torch.bool)
        exact = torch.zeros(size, dtype=torch.bool)
        for i, surface in token_surfaces(source, source_vocab).items():
            j = by_surface.get(surface)
            if j is not None:
                ids[i], mapped[i], exact[i] = j, True, True
            elif approximate:
                j = next((by_surface[v] for v in _variants(*surface) if v in by_surface), None)
                if j is not None:
                    ids[i], mapped[i] = j, True
        for tok in getattr(source, "all_special_tokens", []) or []:  # special tokens: the same string, else by role
            if tok in source_vocab and tok in target_vocab:
                i = source_vocab[tok]
                ids[i], mapped[i], exact[i] = target_vocab[tok], True, True
        # One token may hold several roles (GPT-2's <|endoftext|> is eos, bos, unk and pad): the first role wins,
        # so that the end of a response stays an end of sequence for the reward model.
        by_role: set[int] = set()
        for role in ("eos", "pad", "bos", "unk", "cls", "sep"):
            i, j = getattr(source, f"{role}_token_id", None), getattr(target, f"{role}_token_id", None)
            if i is not None and j is not None and i not in by_role:
                ids[i], mapped[i], exact[i] = j, True, True
                by_role.add(i)
        result = cls(ids=ids, mapped=mapped, exact=exact, **_unmapped(target, fallback, mapped))
        if unmapped == "error" and result.coverage < 1:
            raise ValueError(
                f"Only {result.coverage:.1%} of the diffusion vocabulary maps onto the reward vocabulary; choose an "
                "`unmapped` policy (e.g. 'auto') to send the rest somewhere."
            )
        logger.info(
            "Vocabulary map covers %.2f%% of the diffusion model's tokens (%.2f%% with the same surface); the rest "
            "become %r.",
            100 * result.coverage,
            100 * result.exact_coverage,
            result.unmapped_token,
        )
        return result


def _unmapped(target, fallback: int, mapped: torch.BoolTensor) -> dict:
    """`unmapped_id` and `unmapped_token` of a map: where its tokens without a counterpart went (none: `None`)."""
    if bool(mapped.all()) or fallback < 0:
        return {}
    return {"unmapped_id": int(fallback), "unmapped_token": target.convert_ids_to_tokens(int(fallback))}
