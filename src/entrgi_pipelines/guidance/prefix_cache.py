"""The conversation prefix of a causal reward model, computed once per pipeline call.

A decoder reward model reads `prefix | response | suffix`. The prefix (system prompt, the prompt, the template's text
before the response) is the same at every denoising step and Adam step of a call, and in a causal model its keys and
values do not depend on what follows. [`PrefixCache`] runs the model over the prefixes once, in `RewardTerm.prepare`,
and every reward forward then feeds only `response | suffix` with those keys and values as its cache.

Layout with a cache: `[prefix, left-padded | response and suffix, left-padded]`; position ids count the real tokens
only, so every token has the position it has in the uncached, fully left-packed layout, and the rewards and the
gradients with respect to the response embeddings are the same (to float tolerance).
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
        rows (`torch.LongTensor` of shape `(N,)`): the prefix of each sample.
    """

    def __init__(self, model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask, rows: torch.LongTensor):
        base = model.base_model
        self.config = model.config
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = base(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{cache_argument(base): DynamicCache(config=self.config)},
            )
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        self.layers = [(layer.keys.index_select(0, rows), layer.values.index_select(0, rows)) for layer in cache.layers]
        self.attention_mask = attention_mask.index_select(0, rows)

    def fresh(self) -> DynamicCache:
        """A new cache holding the prefix: the model appends the forward's own keys to it, so each forward gets one."""
        return DynamicCache(ddp_cache_data=self.layers, config=self.config)
