"""The conversation prefix of a causal reward model, computed once per pipeline call, and the committed response
blocks, computed once per block.

A decoder reward model reads `prefix | response | suffix`. The prefix (system prompt, the prompt, the template's text
before the response) is the same at every denoising step and Adam step of a call, and in a causal model its keys and
values do not depend on what follows. [`PrefixCache`] runs the model over the prefixes once, in `RewardTerm.prepare`,
and every reward forward then feeds only `response | suffix` with those keys and values as its cache.

Layout with a cache: `[prefix, left-padded | response and suffix, left-padded]`; position ids count the real tokens
only, so every token has the position it has in the uncached, fully left-packed layout, and the rewards and the
gradients with respect to the response embeddings are the same (to float tolerance).

With `guidance_scope="block"`, the response before each row's current block is committed: it is the same at every Adam
step of the block's denoising steps. [`BlockCache`] extends the prefix's keys and values with it (left-padded per
row: rows may be at different blocks) when a row's committed part changes, and every Adam step then feeds only the
current block and the suffix.
"""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache


def cache_argument(model) -> str | None:
    """The name under which `model.forward` takes a key/value cache (`cache` in transformers >= 5.x, else
    `past_key_values`), or None."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def cacheable_model(adapter) -> PreTrainedModel | None:
    """The HF decoder under a reward adapter whose prefix can be cached: left-padded (causal) and taking a cache."""
    model = getattr(adapter, "model", None)
    if (
        getattr(adapter, "padding_side", None) != "left"
        or "past_key_values" not in getattr(adapter, "accepts", ())
        or not isinstance(model, PreTrainedModel)
        or getattr(model.config, "is_encoder_decoder", False)
        or cache_argument(model.base_model) is None
    ):
        return None
    return model


class PrefixCache:
    """
    Keys and values of a causal model over left-padded prefixes, expanded to one row per sample.

    Args:
        model (`PreTrainedModel`): the decoder (its `base_model` runs; no head).
        inputs_embeds (`torch.Tensor` of shape `(U, P, D)`): the distinct prefixes, left-padded.
        attention_mask (`torch.LongTensor` of shape `(U, P)`): 1 on their real tokens.
        rows (`torch.LongTensor` of shape `(N,)`, *optional*): the prefix of each sample (all `U` rows when omitted).
        past ([`PrefixCache`], *optional*): a cache of `U` rows that the prefixes continue (their keys and values come
            first; positions go on after its real tokens).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.LongTensor,
        rows: torch.LongTensor | None = None,
        past: PrefixCache | None = None,
    ):
        base = model.base_model
        self.config = model.config
        if past is not None:
            attention_mask = torch.cat([past.attention_mask, attention_mask], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[
            :, attention_mask.shape[1] - inputs_embeds.shape[1] :
        ]
        with torch.no_grad():
            out = base(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{cache_argument(base): past.fresh() if past is not None else DynamicCache(config=self.config)},
            )
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.attention_mask = attention_mask
        if rows is not None:
            self.layers, self.attention_mask = self._rows(rows)

    def _rows(self, rows: torch.LongTensor):
        layers = [(keys.index_select(0, rows), values.index_select(0, rows)) for keys, values in self.layers]
        return layers, self.attention_mask.index_select(0, rows)

    def select(self, rows: torch.LongTensor) -> PrefixCache:
        """The cache of `rows` (a copy; this one is left as it is)."""
        selected = object.__new__(PrefixCache)
        selected.config = self.config
        selected.layers, selected.attention_mask = self._rows(rows)
        return selected

    def fresh(self) -> DynamicCache:
        """A new cache holding the prefix: the model appends the forward's own keys to it, so each forward gets one."""
        return DynamicCache(ddp_cache_data=self.layers, config=self.config)


class BlockCache:
    """
    The keys and values of each row's conversation prefix and committed response, and where its current block lies.

    Built by [`RewardTerm.block_cache`] when a row's committed part changes; every reward forward of the block's
    Adam steps then feeds [`window`] (the current block) and the suffix after [`cache`].

    Args:
        cache ([`PrefixCache`] or `None`): keys and values of `[prefix | committed response]` per row (`None`: nothing
            is cached, the prefix goes through the model with the rest).
        start (`torch.LongTensor` of shape `(N,)`): response position of each row's current block (may be negative:
            a block-causal model's first block can begin inside the prompt).
        width (`int`): the block's length.
        key (`tuple[torch.Tensor, ...]`): what the cache was built from (rows, block bounds, committed tokens).
    """

    def __init__(self, cache: PrefixCache | None, start: torch.LongTensor, width: int, key: tuple[torch.Tensor, ...]):
        self.cache, self.start, self.width, self.key = cache, start, width, key

    def window(self, response: torch.Tensor, visible: torch.BoolTensor) -> tuple[torch.Tensor, torch.BoolTensor]:
        """`(N, width, ...)` of the response positions `[start, start + width)` of each row, and which of them are
        seen (inside the response and `visible`); a gather, no host sync."""
        columns = self.start[:, None] + torch.arange(self.width, device=self.start.device)
        inside = (columns >= 0) & (columns < response.shape[1])
        columns = columns.clamp(0, response.shape[1] - 1)
        index = columns.reshape(*columns.shape, *[1] * (response.dim() - 2)).expand(-1, -1, *response.shape[2:])
        return response.gather(1, index), visible.gather(1, columns) & inside
