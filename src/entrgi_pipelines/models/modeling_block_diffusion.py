"""Block-diffusion language models: SDAR / TraDo (Qwen3) and Fast-dLLM v2 (Qwen2.5), natively.

Both are decoder transformers trained so that attention is full inside a block of `block_size` tokens and causal
across blocks: query `i` may attend to key `j` iff `j // block_size <= i // block_size`. The layers are
transformers' own (`Qwen3DecoderLayer`, `Qwen2DecoderLayer`: attention, MLP, RMS norms, rotary embedding); this
module adds the block-causal mask and the key/value cache ([`BlockKVCache`]), and runs SDPA (no `flash_attn`, no flex
attention), so it runs on CPU. The modules carry the published checkpoints' tensor names:

    model.embed_tokens.weight
    model.layers.{i}.input_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight           (SDAR: biases when `attention_bias`)
    model.layers.{i}.self_attn.{q,k,v}_proj.bias               (Fast-dLLM v2: always; no o_proj bias)
    model.layers.{i}.self_attn.{q,k}_norm.weight               (SDAR only: Qwen3's per-head norms)
    model.layers.{i}.post_attention_layernorm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.weight
    model.norm.weight
    lm_head.weight                                             (absent when `tie_word_embeddings`)
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

from .cache_block import BlockKVCache
from .configuration_block_diffusion import Fast_dLLM_QwenConfig, SDARConfig

_IGNORED_WHEN_UNSET = ("output_attentions", "cache_position", "labels", "logits_to_keep")


def _cache_keyword(layer_class: type) -> str:
    # transformers 5 renamed the decoder layers' cache argument to `cache` (4.x: `past_key_values`).
    return "cache" if "cache" in inspect.signature(layer_class.forward).parameters else "past_key_values"


# transformers 5 renamed the outputs' `past_key_values` field to `cache` (the old name warns).
_CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def block_causal_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """`(N, S_q, S_k)` boolean: query `i` may attend to key `j` iff `key_block <= query_block`, the blocks counted
    from position 0 (`position // block_size`)."""
    return (key_positions[:, None, :] // block_size) <= (query_positions[:, :, None] // block_size)


class _BlockDiffusionBase(PreTrainedModel):
    """Shared by the base models: embedding, transformers' decoder layers, final norm, and the masked forward."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flash_attn_2 = False
    _supports_flex_attn = False
    _skip_keys_device_placement = ["past_key_values"]
    _layer_class: type
    _norm_class: type
    _rotary_class: type

    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(self._layer_class(config, i) for i in range(config.num_hidden_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False  # the mask below is the whole attention pattern
        self.norm = self._norm_class(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = self._rotary_class(config=config)
        self.gradient_checkpointing = False
        self._cache_keyword = _cache_keyword(self._layer_class)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _block_size(self) -> int:
        block_size = getattr(self.config, "block_size", None)
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ValueError(
                f"`config.block_size` is {block_size!r}: the block-causal attention needs the checkpoint's block size "
                "(4 for SDAR and TraDo, 32 for Fast-dLLM v2). Set it before the forward pass, e.g. "
                "`model.config.block_size = 4`, or pass `block_size=4` to `from_pretrained`."
            )
        return block_size

    def _attention_mask(
        self,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor,
        valid: torch.Tensor,
        cached_visible: torch.Tensor | None,
        cached_slots: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """The `(N, 1, S, K)` mask over the cached slots then the input, in the attention implementation's form."""
        batch, seq_len = position_ids.shape
        if attention_mask is not None and attention_mask.dim() == 4:
            # An explicit pairwise mask (the SDAR reference's generate builds one): nonzero = may attend.
            expected = (batch, seq_len, cached_slots + seq_len)
            if (attention_mask.shape[0], *attention_mask.shape[2:]) != expected:
                raise ValueError(
                    f"A 4D `attention_mask` must be (batch, 1, sequence, cached + sequence) = "
                    f"({batch}, 1, {seq_len}, {cached_slots + seq_len}), got {tuple(attention_mask.shape)}."
                )
            mask = attention_mask.bool()
        else:
            inputs = block_causal_mask(position_ids, position_ids, self._block_size()) & valid[:, None, :]
            # Every query sees at least itself: a padded query row with no key would be NaN under SDPA, and NaN in
            # a padded hidden state reaches the real rows through `0 * NaN` in the next layer's attention.
            inputs |= torch.eye(seq_len, dtype=torch.bool, device=inputs.device)
            mask = inputs[:, None]
            if cached_slots:
                if cached_visible is None:  # a DynamicCache: every cached token is visible
                    cached_visible = torch.ones(batch, 1, 1, cached_slots, dtype=torch.bool, device=mask.device)
                mask = torch.cat([cached_visible.expand(batch, 1, seq_len, cached_slots), mask], dim=-1)
        if self.config._attn_implementation == "sdpa":
            return mask
        # eager and other implementations add the mask to the scores
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        store_kv: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        Hidden states under the block-causal mask, with or without a key/value cache (see the model class).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): token ids; or `inputs_embeds`.
            attention_mask (`torch.Tensor`, *optional*): `(batch, seq)`, 1 for the input's real tokens (padded keys
                are hidden and, with a cache, not written); or a `(batch, 1, seq, cached + seq)` pairwise mask,
                nonzero where a query may attend (the SDAR reference's convention), used as is.
            position_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): absolute positions (rotary
                angles and block ids); default `0 .. seq - 1` (after the cached tokens, for a `DynamicCache`).
            past_key_values ([`BlockKVCache`] or `DynamicCache`, *optional*): the cache to read (and write with
                `store_kv`).
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq, hidden)`, *optional*): embeddings instead of
                `input_ids` (differentiable).
            use_cache (`bool`, *optional*): accepted for the published call signature; the cache is used whenever
                `past_key_values` is given.
            store_kv (`bool`, defaults to `False`): commit the input's keys and values to the cache (the SDAR
                reference's flag). Without it the cache is left as it was (a `DynamicCache` is cropped back).
            output_hidden_states (`bool`, *optional*): also return the input of every layer and the final output.
            return_dict (`bool`, *optional*): return a `BaseModelOutputWithPast` (default) or a tuple.
            kwargs: `output_attentions`, `cache_position`, `labels` and `logits_to_keep` are accepted unset;
                anything else is refused.
        """
        if "cache" in kwargs:  # transformers 5's name for `past_key_values`
            if past_key_values is not None:
                raise ValueError("Pass the cache as `past_key_values` or `cache`, not both.")
            past_key_values = kwargs.pop("cache")
        for name, value in kwargs.items():
            if name not in _IGNORED_WHEN_UNSET:
                raise TypeError(f"forward() got an unexpected keyword argument {name!r}.")
            if value is not None and value is not False and not (name == "logits_to_keep" and value == 0):
                raise ValueError(
                    f"`{name}` is not supported by the native block-diffusion classes (no attention weights, no "
                    "loss, all logits): leave it unset."
                )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if past_key_values is not None and not isinstance(past_key_values, (BlockKVCache, DynamicCache)):
            raise TypeError(
                f"`past_key_values` must be a BlockKVCache or a DynamicCache, got {type(past_key_values).__name__}."
            )
        hidden_states = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq_len = hidden_states.shape[:2]
        device = hidden_states.device

        dynamic_length = past_key_values.get_seq_length() if isinstance(past_key_values, DynamicCache) else 0
        if position_ids is None:
            position_ids = torch.arange(dynamic_length, dynamic_length + seq_len, device=device).expand(batch, -1)
        if tuple(position_ids.shape) != (batch, seq_len):
            raise ValueError(
                f"`position_ids` must be (batch, seq) = {(batch, seq_len)}, got {tuple(position_ids.shape)}."
            )
        if attention_mask is not None and attention_mask.dim() == 2:
            if tuple(attention_mask.shape) != (batch, seq_len):
                raise ValueError(
                    f"A 2D `attention_mask` must be (batch, seq) = {(batch, seq_len)} (the input's tokens only), got "
                    f"{tuple(attention_mask.shape)}."
                )
            valid = attention_mask.bool()
        elif attention_mask is None or attention_mask.dim() == 4:
            valid = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        else:
            raise ValueError(f"`attention_mask` must be 2D or 4D, got {attention_mask.dim()} dimensions.")

        cached_visible, cached_slots = None, dynamic_length
        if isinstance(past_key_values, BlockKVCache):
            cached_visible = past_key_values.begin(position_ids, valid, store=bool(store_kv))
            cached_slots = cached_visible.shape[-1]
        mask = self._attention_mask(
            attention_mask, position_ids, valid, cached_visible, cached_slots, hidden_states.dtype
        )
        position_embeddings = self.rotary_emb(hidden_states, position_ids)

        all_hidden_states = []
        cache_kwargs = {} if past_key_values is None else {self._cache_keyword: past_key_values}
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            output = layer(
                hidden_states,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                **cache_kwargs,
            )
            hidden_states = output[0] if isinstance(output, tuple) else output
        hidden_states = self.norm(hidden_states)

        if isinstance(past_key_values, BlockKVCache):
            past_key_values.finish()
        elif isinstance(past_key_values, DynamicCache) and not store_kv:
            past_key_values.crop(-seq_len)  # reading only: back to the cache it was (negative: tokens to drop)

        hidden = (*all_hidden_states, hidden_states) if output_hidden_states else None
        if not (self.config.return_dict if return_dict is None else return_dict):
            return tuple(v for v in (hidden_states, past_key_values, hidden) if v is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=hidden, **{_CACHE_FIELD: past_key_values}
        )


class _BlockDiffusionForCausalLM(PreTrainedModel):
    """Shared by the LM classes: a base model and the output projection (tied to the embedding when configured)."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flash_attn_2 = False
    _supports_flex_attn = False
    _skip_keys_device_placement = ["past_key_values"]
    # transformers' own spelling of the tie (a list in 4.x, a target -> source dict in 5.x)
    _tied_weights_keys = Qwen3ForCausalLM._tied_weights_keys
    _base_class: type

    def __init__(self, config):
        super().__init__(config)
        self.model = self._base_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_decoder(self) -> _BlockDiffusionBase:
        return self.model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        store_kv: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        Logits for every input position, under the block-causal mask, with or without a cache.

        The arguments are those of the base model's forward (`SDARModel.forward`, `Fast_dLLM_QwenModel.forward`):
        `input_ids` or `inputs_embeds`, `attention_mask` (`(batch, seq)` valid-input mask, or a 4D pairwise mask),
        `position_ids` (absolute positions), `past_key_values` ([`BlockKVCache`] or `DynamicCache`), `store_kv`
        (commit the input to the cache), `output_hidden_states`, `return_dict`.

        Returns:
            `CausalLMOutputWithPast` with `logits` `(batch, seq, vocab)` (Fast-dLLM v2's are shifted: position
            `i - 1` scores token `i`; `config.logits_shift` says which), `past_key_values` (the cache passed in) and
            `hidden_states` when asked; or a tuple.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            store_kv=store_kv,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        cache = getattr(outputs, _CACHE_FIELD)
        if not (self.config.return_dict if return_dict is None else return_dict):
            return tuple(v for v in (logits, cache, outputs.hidden_states) if v is not None)
        return CausalLMOutputWithPast(logits=logits, hidden_states=outputs.hidden_states, **{_CACHE_FIELD: cache})


# ----------------------------------------------------------------------------------------------------------------
# SDAR / TraDo
# ----------------------------------------------------------------------------------------------------------------


class SDARModel(_BlockDiffusionBase):
    """SDAR's transformer without the output projection (the `model.` part of a checkpoint): transformers'
    `Qwen3DecoderLayer`s under the block-causal mask. See [`SDARForCausalLM`]."""

    config_class = SDARConfig
    _no_split_modules = ["Qwen3DecoderLayer"]
    _layer_class = Qwen3DecoderLayer
    _norm_class = Qwen3RMSNorm
    _rotary_class = Qwen3RotaryEmbedding


class SDARForCausalLM(_BlockDiffusionForCausalLM):
    r"""
    SDAR and TraDo (JetLM/SDAR-1.7B-Chat, 4B, 8B; Gen-Verse/TraDo-4B-Instruct, 8B): Qwen3 block-diffusion LMs,
    loading their checkpoints (model type `"sdar"`) as they are, without the repository's code.

    Registered with transformers' `AutoModel` and `AutoModelForCausalLM` (both give this class, with its logits; the
    published `auto_map` gives the headless `SDARModel` for `AutoModel`) when `entrgi_pipelines` is imported.

    Forward semantics (every mask and position is per row, so rows may be at different blocks):

    - **no cache**: query `i` attends to key `j` iff `j // block_size <= i // block_size` (full inside a block, causal
      across blocks, blocks aligned from position 0); with `position_ids` the block ids come from them (left padding
      works), and a `(batch, seq)` `attention_mask` hides padded keys. A query with no visible key gets a finite
      output (it sees itself).
    - **with a [`BlockKVCache`]**: rotary angles and block ids from the absolute `position_ids`; the input attends to
      itself by the block-causal rule and to the row's committed slots before its first position; `store_kv=True`
      commits the input. The logits equal the uncached forward's on the whole sequence (tested).
    - **with a `DynamicCache`** (the SDAR reference's decoder): every cached token is visible; without `store_kv`
      the cache is cropped back afterwards.

    Logits are not shifted (`config.logits_shift` is False). The forward pass is differentiable with respect to
    `inputs_embeds`. Not implemented: training (the published class's noised/clean concatenation and its fused
    loss), `generate`, attention weights, sliding windows, flash and flex attention (SDPA or eager only).

    Args:
        config ([`SDARConfig`]): the model's configuration (`block_size` required at forward time).

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.models import SDARConfig, SDARForCausalLM

        >>> config = SDARConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, block_size=4)
        >>> model = SDARForCausalLM(config).eval()
        >>> model(torch.tensor([[5, 6, 7, 8, 9, 63]])).logits.shape
        torch.Size([1, 6, 64])
        ```
    """

    config_class = SDARConfig
    _no_split_modules = ["Qwen3DecoderLayer"]
    _base_class = SDARModel


# ----------------------------------------------------------------------------------------------------------------
# Fast-dLLM v2
# ----------------------------------------------------------------------------------------------------------------


class Fast_dLLM_QwenModel(_BlockDiffusionBase):  # noqa: N801  (the published class name)
    """Fast-dLLM v2's transformer without the output projection: transformers' `Qwen2DecoderLayer`s under the
    block-causal mask of `bd_size`. See [`Fast_dLLM_QwenForCausalLM`]."""

    config_class = Fast_dLLM_QwenConfig
    _no_split_modules = ["Qwen2DecoderLayer"]
    _layer_class = Qwen2DecoderLayer
    _norm_class = Qwen2RMSNorm
    _rotary_class = Qwen2RotaryEmbedding


class Fast_dLLM_QwenForCausalLM(_BlockDiffusionForCausalLM):  # noqa: N801  (the published class name)
    r"""
    Fast-dLLM v2 (Efficient-Large-Model/Fast_dLLM_v2_1.5B, _7B): Qwen2.5 block-diffusion LMs, loading their
    checkpoints (model type `"Fast_dLLM_Qwen"`) as they are, without the repository's code.

    The same forward semantics as [`SDARForCausalLM`] (block-causal mask from position 0 with blocks of `bd_size`,
    `config.block_size` being the same value; [`BlockKVCache`] or `DynamicCache`), on Qwen2's layers: queries, keys
    and values with biases, no query/key norms, any head counts, tied embeddings when `tie_word_embeddings`.

    The logits are **shifted** as Dream's (`config.logits_shift` is True): position `i - 1` scores the token at `i`,
    so the first token of a block is scored by the last token before it. With a cache, re-run the last committed
    token as the first input token (its slot is superseded, not duplicated) or keep its logits from the commit.

    Args:
        config ([`Fast_dLLM_QwenConfig`]): the model's configuration.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.models import Fast_dLLM_QwenConfig, Fast_dLLM_QwenForCausalLM

        >>> config = Fast_dLLM_QwenConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                               num_attention_heads=4, num_key_value_heads=2, bd_size=4,
        ...                               tie_word_embeddings=True)
        >>> model = Fast_dLLM_QwenForCausalLM(config).eval()
        >>> model(torch.tensor([[5, 6, 7, 8, 63, 63]])).logits.shape, model.config.logits_shift
        (torch.Size([1, 6, 64]), True)
        ```
    """

    config_class = Fast_dLLM_QwenConfig
    _no_split_modules = ["Qwen2DecoderLayer"]
    _base_class = Fast_dLLM_QwenModel
