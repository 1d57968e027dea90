"""Differentiable rewards: adapters for reward models, and the layout of their inputs.

A reward sees `prefix | response | suffix` for each sample, where the prefix and suffix wrap the response as a
[`RewardTemplate`] says (by default the way the reward model was trained: its chat template, or a text pair without
one). Guidance feeds the response as embeddings (soft, hard or mixed); the reported reward feeds the decoded text's
tokens. Both go through :meth:`RewardTerm.reward`, so for the same tokens they see the same sequence, padding, pooling
position, scored tokens and end-of-sequence cut.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_choice
from .prefix_cache import BlockCache, PrefixCache, cache_argument, cacheable_model
from .templates import RewardTemplate, layout_response
from .vocab import VocabularyMap


class RewardAdapter(nn.Module):
    """
    Base of the reward adapters: `forward(inputs_embeds, attention_mask, **extra) -> reward (N,)` and
    `get_input_embeddings()`.

    Attributes:
        padding_side (`str`): where [`RewardTerm`] puts the padding of its inputs (`"left"` for models that read the
            last position: decoders).
        accepts (`set[str]`): the optional inputs `forward` takes, among `token_type_ids`, `position_ids`, `labels`
            (the scored token ids, -100 elsewhere), `logits_to_keep` and `past_key_values` (a prefix cache); the
            others are not passed.
    """

    padding_side: str = "right"
    accepts: set[str] = set()


class SequenceClassifierReward(RewardAdapter):
    """
    Adapts an HF `*ForSequenceClassification` with one label to `(inputs_embeds, attention_mask) -> reward (N,)`.

    Args:
        model: the classifier (`config.num_labels == 1`).
        padding_side (`str`, *optional*): where padding goes. HF classifiers that pool the last token (`score` head:
            Llama, Qwen, Mistral, GPT-2) cannot find it from `inputs_embeds` and pool position -1, so they need
            `"left"`; encoders that pool the first token (`classifier` head: BERT, RoBERTa) need `"right"`. Detected
            from the head's name when not given.
    """

    def __init__(self, model: nn.Module, padding_side: str | None = None):
        super().__init__()
        check_choice("padding_side", padding_side, ("left", "right"), none_ok=True)
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if num_labels != 1:
            raise ValueError(
                f"`reward_model` must score each sequence with one number (`config.num_labels == 1`), got "
                f"num_labels={num_labels}; wrap it in a callable that returns one reward per row."
            )
        self.model = model
        self.padding_side = padding_side or ("left" if hasattr(model, "score") else "right")
        accepted = inspect.signature(model.forward).parameters
        self.accepts = {name for name in ("token_type_ids", "position_ids") if name in accepted}
        self.cache_argument = cache_argument(model)
        if self.cache_argument is not None:
            self.accepts.add("past_key_values")

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor):
        extra = {k: v for k, v in extra.items() if k in self.accepts}
        if "past_key_values" in extra:
            extra[self.cache_argument] = extra.pop("past_key_values")
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra).logits[:, 0]


class CallableReward(RewardAdapter):
    """Wraps any callable `(inputs_embeds, attention_mask) -> reward (N,)` that has `get_input_embeddings()`."""

    def __init__(self, reward: Callable, padding_side: str = "right"):
        super().__init__()
        check_choice("padding_side", padding_side, ("left", "right"))
        if not callable(reward) or not callable(getattr(reward, "get_input_embeddings", None)):
            raise TypeError(
                "`reward` must be callable as `(inputs_embeds, attention_mask)` and have `get_input_embeddings()`, "
                f"got {type(reward).__name__}."
            )
        self.reward = reward
        self.padding_side = padding_side
        # Optional inputs are passed by keyword when the callable names them (e.g. `position_ids`).
        try:
            accepted = inspect.signature(reward.forward if isinstance(reward, nn.Module) else reward).parameters
        except (TypeError, ValueError):
            accepted = {}
        self.accepts = {name for name in ("token_type_ids", "position_ids", "labels") if name in accepted}

    def get_input_embeddings(self) -> nn.Module:
        return self.reward.get_input_embeddings()

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor):
        reward = self.reward(inputs_embeds, attention_mask, **{k: v for k, v in extra.items() if k in self.accepts})
        return getattr(reward, "logits", reward).reshape(inputs_embeds.shape[0], -1)[:, 0]


def as_differentiable_reward(reward_model: Any, padding_side: str | None = None) -> nn.Module:
    """Returns `reward_model` as a module `(inputs_embeds, attention_mask) -> (N,)` with `get_input_embeddings()`."""
    if isinstance(reward_model, RewardAdapter):
        return reward_model
    if not callable(getattr(reward_model, "get_input_embeddings", None)):
        raise TypeError(
            f"`reward_model` must expose `get_input_embeddings()` so guidance can feed it embeddings; "
            f"{type(reward_model).__name__} does not. Use an HF *ForSequenceClassification model or add the method."
        )
    if hasattr(getattr(reward_model, "config", None), "num_labels"):
        return SequenceClassifierReward(reward_model, padding_side)
    if not callable(reward_model):
        raise TypeError(f"`reward_model` must be callable as `(inputs_embeds, attention_mask)`, got {reward_model!r}.")
    return CallableReward(reward_model, padding_side or "right")


def wrap_response(
    tokenizer, prompt: str, template: RewardTemplate | None = None
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Token ids (and token types) that come before and after a response to `prompt` in the reward model's input.

    With the default template and a chat template: the conversation `[user: prompt, assistant: response]` rendered
    and split at the response. Without a chat template: the tokenizer's text pair `(prompt, response)` (e.g.
    `[CLS] prompt [SEP] response [SEP]`). See [`layout_response`] for other templates and the scored tokens.
    """
    layout = layout_response(tokenizer, template or RewardTemplate(), prompt, prompt)
    return layout.prefix, layout.prefix_types, layout.suffix, layout.suffix_types


def visible_before_eos(tokens: torch.LongTensor, eos_token_id: int | None) -> torch.BoolTensor:
    """Positions before the first end-of-sequence token of each row (the token itself and all after are hidden)."""
    if eos_token_id is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return (tokens == eos_token_id).cumsum(-1) == 0


def pack(keep: torch.BoolTensor, padding_side: str) -> torch.LongTensor:
    """A gather index that moves the kept positions of each row together, in order, to one side (no host sync)."""
    key = keep.int() if padding_side == "left" else (~keep).int()
    return key.argsort(dim=-1, stable=True)


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.LongTensor, torch.BoolTensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        keep[i, : len(row)] = True
    return ids, keep


class RewardTerm:
    """
    One reward model inside guidance: its adapter, tokenizer, weight, vocabulary map and template, and the per-call
    prefix/suffix of every sample.

    Args:
        reward_model: an HF sequence classifier with one label, or any differentiable reward (see
            [`as_differentiable_reward`]).
        tokenizer: the reward model's tokenizer.
        weight (`float`): the term's weight in the summed reward.
        vocab_map ([`VocabularyMap`], *optional*): diffusion ids -> reward ids (identity when omitted).
        padding_side (`str`, *optional*): overrides the adapter's padding side.
        template ([`RewardTemplate`], list of messages or `str`, *optional*): where the prompt, target and response
            go; defaults to the reward model's own `reward_template` attribute when it has one, else to
            `[user: {target}, assistant: {response}]` (a text pair without a chat template).
        prefix_cache (`bool`, *optional*): compute the keys and values of the conversation prefix once per call (see
            [`PrefixCache`]); by default on for causal (left-padded) HF models that take a cache.
        block_cache (`bool`, *optional*): with `guidance_scope="block"`, compute the keys and values of the prefix
            and of each row's committed response once per block (see [`update_block_cache`]); by default on where the
            prefix cache can be (it holds the prefix even with `prefix_cache=False`).
    """

    def __init__(
        self,
        reward_model,
        tokenizer,
        weight: float = 1.0,
        vocab_map: VocabularyMap | None = None,
        padding_side: str | None = None,
        template: RewardTemplate | Sequence | str | None = None,
        prefix_cache: bool | None = None,
        block_cache: bool | None = None,
    ):
        self.adapter = as_differentiable_reward(reward_model, padding_side)
        self.tokenizer = tokenizer
        self.weight = weight
        self.embeddings = self.adapter.get_input_embeddings()
        self.vocab_map = vocab_map or VocabularyMap.identity(self.embeddings.weight.shape[0])
        own = getattr(reward_model, "reward_template", None) or getattr(self.adapter, "reward_template", None)
        self.template = RewardTemplate.from_any(template if template is not None else own)
        if self.template.score is not None and (
            "labels" not in self.adapter.accepts or self.adapter.padding_side != "left"
        ):
            raise ValueError(
                f"The reward template scores its {{{self.template.score}}} tokens, but the reward model does not read "
                "left-padded `labels`: wrap a causal LM in `CausalLMReward`, or use a template without `score`."
            )
        self.cache_model = cacheable_model(self.adapter)
        if prefix_cache and self.cache_model is None:
            raise ValueError(
                "`prefix_cache=True` needs a causal HF reward model that takes a key/value cache (left padding); "
                "pass `prefix_cache=None` to use it where possible."
            )
        self.prefix_cache = prefix_cache is not False and self.cache_model is not None
        if block_cache and self.cache_model is None:
            raise ValueError(
                "`block_cache=True` needs a causal HF reward model that takes a key/value cache (left padding); "
                "pass `block_cache=None` to use it where possible."
            )
        self.block_cache = block_cache is not False and self.cache_model is not None
        self._block: BlockCache | None = None
        self._selected: tuple[torch.Tensor, dict[str, Any]] | None = None
        self._context: dict[str, Any] | None = None
        self._dllm_embeddings: torch.Tensor | None = None

    def dllm_embedding_matrix(self) -> torch.Tensor:
        """The reward model's embedding of every diffusion-vocabulary token, `(V_dllm, D)`, without gradient."""
        weight = self.embeddings.weight
        if self._dllm_embeddings is None or self._dllm_embeddings.device != weight.device:
            self._dllm_embeddings = weight.detach()[self.vocab_map.ids.to(weight.device)]
        return self._dllm_embeddings

    def prepare(
        self, reward_prompts: Sequence[str], device: torch.device | str, prompts: Sequence[str] | None = None
    ) -> None:
        """Builds the prefix and suffix of each of the N samples, and the prefix cache when it is on.

        Args:
            reward_prompts: one target (the `{target}` slot) per sample.
            device: where the reward model is.
            prompts (*optional*): one generation prompt (the `{prompt}` slot) per sample; defaults to
                `reward_prompts`.
        """
        self._dllm_embeddings = None  # re-read at every call: the reward model's weights may have changed since
        self._block = self._selected = None  # built from this call's prefixes and tokens
        prompts = list(reward_prompts) if prompts is None else list(prompts)
        if len(prompts) != len(reward_prompts):
            raise ValueError(f"Got {len(prompts)} `prompts` for {len(reward_prompts)} `reward_prompts`.")
        pairs = list(zip(prompts, reward_prompts))
        unique = {pair: i for i, pair in enumerate(dict.fromkeys(pairs))}
        layouts = [layout_response(self.tokenizer, self.template, prompt, target) for prompt, target in unique]
        rows = torch.tensor([unique[pair] for pair in pairs], dtype=torch.long)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prefix, prefix_keep = _pad([p.prefix for p in layouts], pad)
        prefix_types, _ = _pad([p.prefix_types for p in layouts], 0)
        suffix, suffix_keep = _pad([p.suffix for p in layouts], pad)
        suffix_types, _ = _pad([p.suffix_types for p in layouts], 0)
        scored, _ = _pad([p.scored for p in layouts], False)
        # The response takes the token type of the suffix's first token (the second segment of a text pair).
        response_type = torch.tensor(
            [p.suffix_types[0] if p.suffix else (p.prefix_types[-1:] or [0])[0] for p in layouts]
        )
        with torch.no_grad():
            context = {
                "prefix": self.embeddings(prefix.to(device)).detach(),
                "suffix": self.embeddings(suffix.to(device)).detach(),
                "prefix_keep": prefix_keep.to(device),
                "suffix_keep": suffix_keep.to(device),
                "prefix_types": prefix_types.to(device),
                "suffix_types": suffix_types.to(device),
                "suffix_labels": torch.where(scored.bool(), suffix, -100).to(device),
                "response_type": response_type.to(device),
            }
        # Tensors per distinct (prompt, target), expanded to one row per sample.
        leads = [layouts[i].lead for i in rows.tolist()]
        rows = rows.to(device)
        self._context = {name: value.index_select(0, rows) for name, value in context.items()}
        self._context["leads"] = leads
        # Scored tokens end every suffix (left padding puts them last): the logits of these last positions suffice.
        self._context["score_width"] = max((sum(p.scored) for p in layouts), default=0)
        self._context["cache"] = None
        if self.prefix_cache and prefix.shape[1] > 0:
            order = pack(context["prefix_keep"], "left")
            embeds = context["prefix"].gather(1, order[..., None].expand(-1, -1, context["prefix"].shape[-1]))
            mask = context["prefix_keep"].gather(1, order).long()
            self._context["cache"] = PrefixCache(self.cache_model, embeds, mask, rows)

    def _rows_context(self, rows: torch.LongTensor | None, batch: int) -> dict[str, Any]:
        """The prepared context of the samples `rows` (all when None), kept while the same `rows` tensor comes."""
        if rows is None:
            if batch != self._context["prefix"].shape[0]:
                raise ValueError(
                    f"Got {batch} responses for {self._context['prefix'].shape[0]} prepared samples: pass `rows`, the "
                    "prepared sample of each response (the pipeline's `active_rows` when finished rows leave)."
                )
            return self._context
        if self._selected is None or self._selected[0] is not rows:
            context = {
                name: value.index_select(0, rows.to(value.device)) if isinstance(value, torch.Tensor) else value
                for name, value in self._context.items()
                if name not in ("leads", "cache")
            }
            cache = self._context["cache"]
            context["cache"] = cache.select(rows.to(cache.attention_mask.device)) if cache is not None else None
            self._selected = (rows, context)
        return self._selected[1]

    def update_block_cache(
        self,
        tokens: torch.LongTensor,
        visible: torch.BoolTensor,
        block_bounds: torch.LongTensor,
        rows: torch.LongTensor | None = None,
    ) -> BlockCache:
        """The [`BlockCache`] of responses whose positions before `block_bounds[:, 0]` are committed.

        The committed part (the seen positions before each row's block) is read by the model without gradient, after
        the prefix cache (or with the prefix, without one), left-padded per row with positions that count real
        tokens, so that a forward of the block after it gives the uncached reward and gradients. The last cache is
        kept while the rows, their block bounds and their committed tokens stay the same (one host sync per call to
        check: per denoising step, not per Adam step). When rows move on to their next block it is extended by the
        newly committed tokens alone (one forward of a block's width; a row that did not move gets padding there),
        and rebuilt from the prefix when a committed token changed (SMC resampled a row), the rows changed, or the
        padding would outgrow the real tokens.

        Args:
            tokens (`torch.LongTensor` of shape `(N, L)`): the response tokens (diffusion ids).
            visible (`torch.BoolTensor` of shape `(N, L)`): the positions the reward model sees (before the first
                end-of-sequence token).
            block_bounds (`torch.LongTensor` of shape `(N, 2)`): each row's current block, response positions
                `[start, end)`; `start` may be negative.
            rows (`torch.LongTensor` of shape `(N,)`, *optional*): the prepared sample of each row (all, in order,
                when omitted).

        Examples:
            ```py
            >>> import torch
            >>> from entrgi_pipelines.guidance import RewardTerm
            >>> from entrgi_pipelines.testing import tiny_decoder_reward_model, tiny_wordpiece_tokenizer

            >>> tokenizer = tiny_wordpiece_tokenizer()
            >>> term = RewardTerm(tiny_decoder_reward_model(len(tokenizer)), tokenizer)
            >>> term.prepare(["the cat", "why"], "cpu")
            >>> tokens = torch.randint(5, len(tokenizer), (2, 8))
            >>> visible = torch.ones_like(tokens, dtype=torch.bool)
            >>> bounds = torch.tensor([[4, 8], [0, 4]])  # row 0 has committed 4 tokens, row 1 none
            >>> block = term.update_block_cache(tokens, visible, bounds)
            >>> embeds = term.dllm_embedding_matrix()[tokens]
            >>> visible = visible & (torch.arange(8) < bounds[:, 1:])  # nothing after the block is seen
            >>> torch.allclose(term.reward(embeds, visible, block), term.reward(embeds, visible), atol=1e-5)
            True
            ```
        """
        if self._context is None:
            raise RuntimeError("Call `prepare(reward_prompts, device)` before building a block cache.")
        device = self.embeddings.weight.device
        # a copy of the bounds: the key must not follow a caller that edits its tensor in place
        tokens, visible, block_bounds = tokens.to(device), visible.to(device), block_bounds.to(device, copy=True)
        start, positions = block_bounds[:, 0], torch.arange(tokens.shape[1], device=device)
        committed = visible & (positions < start[:, None])
        key = (block_bounds, torch.where(committed, tokens, -1))
        key = key if rows is None else (*key, rows.to(device))
        width, length = (block_bounds[:, 1] - start).max(), committed.sum(-1).max()
        old = self._block
        if old is None or len(old.key) != len(key) or any(a.shape != b.shape for a, b in zip(old.key, key)):
            width, length = torch.stack([width, length]).tolist()
            self._block = BlockCache(self._committed_cache(rows, None, tokens, committed, length), start, width, key)
            return self._block
        unchanged = ~torch.stack([(a != b).any() for a, b in zip(old.key, key)]).any()
        # Extendable: the same rows, none moved back, every cached token still committed and the same, and the new
        # ones after them.
        was_committed = old.key[1] >= 0
        new = committed & ~was_committed
        same = [(a == b).all() for a, b in zip(old.key[2:], key[2:])]
        extendable = torch.stack(
            [
                (start >= old.start).all(),
                (torch.where(was_committed, key[1], -1) == old.key[1]).all(),
                ~(new & (positions < old.start[:, None])).any(),
                *same,
            ]
        ).all()
        grow = new.sum(-1).max()
        real = (old.cache.attention_mask.sum(-1) + new.sum(-1)).max() if old.cache is not None else grow
        checks = [unchanged, extendable, width, length, grow, real]
        unchanged, extendable, width, length, grow, real = torch.stack([t.long() for t in checks]).tolist()
        if unchanged:  # the step's one host sync said so
            return old
        if extendable and old.cache is not None and old.cache.attention_mask.shape[1] + grow <= 2 * real:
            cache = self._committed_cache(rows, old.cache, tokens, new, grow)
        else:
            cache = self._committed_cache(rows, None, tokens, committed, length)
        self._block = BlockCache(cache, start, width, key)
        return self._block

    def _committed_cache(self, rows, past: PrefixCache | None, tokens, keep, length: int) -> PrefixCache | None:
        """`past` (by default the prefix cache of `rows`) extended by the `keep` tokens, left-packed to `length`."""
        c = self._rows_context(rows, tokens.shape[0])
        past = c["cache"] if past is None else past
        if length == 0:
            return past
        order = pack(keep, "left")[:, keep.shape[1] - length :]
        embeds = self.dllm_embedding_matrix()[tokens.gather(1, order)]
        mask = keep.gather(1, order)
        if past is None:  # no prefix cache: the prefix is read here, with the committed part
            embeds = torch.cat([c["prefix"].to(embeds.dtype), embeds], dim=1)
            mask = torch.cat([c["prefix_keep"], mask], dim=1)
            order = pack(mask, "left")
            embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
            mask = mask.gather(1, order)
        return PrefixCache(self.cache_model, embeds, mask.long(), past=past)

    def reward(
        self,
        response_embeds: torch.Tensor,
        visible: torch.BoolTensor,
        block: BlockCache | None = None,
        rows: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Reward `(N,)` of responses given as embeddings `(N, L, D)`; positions where `visible` is False are unseen.

        With `block` (from [`update_block_cache`] for these responses' committed tokens), only each row's current
        block is read, after the cached prefix and committed part: the same reward and gradients with respect to the
        block's embeddings, at the cost of the block and the suffix. `rows`: the prepared sample of each row.
        """
        if self._context is None:
            raise RuntimeError("Call `prepare(reward_prompts, device)` before computing rewards.")
        c, dtype = self._rows_context(rows, response_embeds.shape[0]), response_embeds.dtype
        cache: PrefixCache | None = c["cache"]
        if block is not None:
            cache = block.cache
            response_embeds, visible = block.window(response_embeds, visible)
        response_types = c["response_type"][:, None].expand_as(visible)
        parts = [
            (response_embeds, visible, response_types),
            (c["suffix"].to(dtype), c["suffix_keep"], c["suffix_types"]),
        ]
        if cache is None:  # the prefix goes through the model with the rest
            parts.insert(0, (c["prefix"].to(dtype), c["prefix_keep"], c["prefix_types"]))
        embeds, keep, types = (torch.cat(tensors, dim=1) for tensors in zip(*parts))
        order = pack(keep, self.adapter.padding_side)
        embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
        attention_mask = keep.gather(1, order).long()
        if cache is not None:  # the mask covers the cached prefix too; positions continue after it
            attention_mask = torch.cat([cache.attention_mask, attention_mask], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, attention_mask.shape[1] - embeds.shape[1] :]
        extra = {"token_type_ids": types.gather(1, order), "position_ids": position_ids}
        if self.template.score is not None:
            labels = F.pad(c["suffix_labels"], (keep.shape[1] - c["suffix_labels"].shape[1], 0), value=-100)
            extra["labels"] = labels.gather(1, order)
            extra["logits_to_keep"] = c["score_width"] + 1
        if cache is not None:
            extra["past_key_values"] = cache.fresh()
        extra = {name: value for name, value in extra.items() if name in self.adapter.accepts}
        return self.adapter(inputs_embeds=embeds, attention_mask=attention_mask, **extra).float()

    def reward_of_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Reward `(N,)` of response texts, tokenised by the reward tokenizer (the discrete reward).

        A non-empty text is tokenised with the spaces that precede the response in the template (`"Text: "` ->
        `" " + text`), so that its tokens are those of the whole rendered input.
        """
        leads = self._context["leads"] if self._context is not None else [""] * len(texts)
        texts = [lead + text if text else text for lead, text in zip(leads, texts, strict=True)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, visible = _pad(ids, pad)
        device = self.embeddings.weight.device
        if ids.shape[1] == 0:  # every response is empty
            ids, visible = ids.new_full((len(texts), 1), pad), visible.new_zeros((len(texts), 1))
        return self.reward(self.embeddings(ids.to(device)), visible.to(device))
