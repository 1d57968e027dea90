"""What the native Dream and LLaDA classes share: weight initialisation, embedding accessors and the forward pass
(embeddings -> layers -> final norm -> output projection), under each family's own module names."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .cache_full_attention import FullAttentionKVCache
from .layers import AttentionMask, RMSNorm, default_position_ids, refuse_unsupported_kwargs, rope_base, rotary_cos_sin


class BidirectionalLM(PreTrainedModel):
    """A masked diffusion LM: a transformer with bidirectional attention and RoPE, with Fast-dLLM's approximate
    key/value cache on request ([`FullAttentionKVCache`]).

    A subclass builds its modules under the published checkpoint's names and states where they are, as dotted paths
    from the model: `_embedding_path` (the token embedding), `_layers_path` (the `nn.ModuleList` of layers, each
    called as `layer(hidden_states, cos, sin, mask, kv)` with an [`AttentionMask`] and `kv` None or a function
    `(keys, values) -> (keys, values)` that its attention applies to its rotated `(N, H_kv, S, D)` keys and values
    before attending), `_norm_path` (the final norm) and
    `_head_path` (the output projection; the embedding is used when that module is absent, as with tied weights). It
    may override `_scale_embeddings`, `_scale_logits` and `_initializer_std`.
    """

    base_model_prefix = "model"
    _embedding_path: str
    _layers_path: str
    _norm_path: str
    _head_path: str

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.rope_theta = rope_base(config, type(self).__name__)
        self.head_dim = config.hidden_size // config.num_attention_heads

    def _initializer_std(self) -> float:
        return self.config.initializer_range

    def _init_weights(self, module: nn.Module) -> None:
        # torch.nn.init (not `.data`): transformers 5 skips what a checkpoint already loaded through these functions.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self._initializer_std())
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.get_submodule(self._embedding_path)

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        parent, _, name = self._embedding_path.rpartition(".")
        setattr(self.get_submodule(parent), name, value)

    def get_output_embeddings(self) -> nn.Module:
        try:
            return self.get_submodule(self._head_path)
        except AttributeError:  # no output projection: the weights are tied to the embedding
            return self.get_input_embeddings()

    def _scale_embeddings(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """What the family does to the token embeddings before the first layer (nothing by default)."""
        return hidden_states

    def _scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """What the family does to the logits after the output projection (nothing by default)."""
        return logits

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: FullAttentionKVCache | None = None,
        cache_position: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        r"""
        Logits for every input position.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): token ids; or `inputs_embeds`.
            attention_mask (`torch.Tensor`, *optional*): a `(batch, keys)` padding mask (1 for real tokens: padded
                keys are hidden from every query), or a boolean `(batch, 1, seq, keys)` pairwise mask (True: may
                attend), or a float additive `(batch, 1, seq, keys)` mask. `keys` is `seq`, or the cached sequence's
                length when reading a cache.
            position_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): RoPE positions; defaults to
                `0 .. seq - 1` (to `cache_position` when reading a cache). With left padding, pass the positions
                counted from each row's first real token.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq, hidden)`, *optional*): input embeddings
                instead of `input_ids` (differentiable).
            output_hidden_states (`bool`, *optional*): also return the input of every layer and the final normed
                hidden states.
            return_dict (`bool`, *optional*): return a `MaskedLMOutput` (default) or a tuple.
            past_key_values ([`FullAttentionKVCache`], *optional*): Fast-dLLM's approximate cache. Without
                `cache_position` this forward runs the whole sequence and fills it; with `cache_position` it runs
                only the input's tokens against it (see [`FullAttentionKVCache`]).
            cache_position (`torch.LongTensor` of shape `(seq,)`, *optional*): with `past_key_values`, the columns
                of the cached sequence that the input's tokens sit at (the same for every row).
            use_cache (`bool`, *optional*): accepted for callers of the published code; `False` with a cache is
                refused as a contradiction.
            kwargs: accepted for compatibility with callers of the published code when unset
                (`output_attentions=False`, `labels=None`); anything else is refused.

        Returns:
            `MaskedLMOutput` with `logits` `(batch, seq, vocab)` (and `hidden_states` when asked), or a tuple.
        """
        refuse_unsupported_kwargs(kwargs)
        if past_key_values is None:
            refuse_unsupported_kwargs({"use_cache": use_cache, "cache_position": cache_position})
        elif not isinstance(past_key_values, FullAttentionKVCache):
            refuse_unsupported_kwargs({"past_key_values": past_key_values})
        elif use_cache is False:
            raise ValueError("`use_cache=False` contradicts `past_key_values=`: drop one of them.")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        hidden_states = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        hidden_states = self._scale_embeddings(hidden_states)
        batch, seq_len = hidden_states.shape[:2]
        layers = self.get_submodule(self._layers_path)
        key_len = seq_len
        if past_key_values is not None:
            key_len = past_key_values.begin(batch, seq_len, len(layers), cache_position)
        if position_ids is None:
            if cache_position is not None:
                position_ids = cache_position.expand(batch, seq_len)
            else:
                position_ids = default_position_ids(batch, seq_len, hidden_states.device)
        # Built once for all layers: the rotary angles and the mask (with its rows that see no key).
        cos, sin = rotary_cos_sin(position_ids, self.head_dim, self.rope_theta)
        mask = AttentionMask.build(attention_mask, batch, seq_len, hidden_states.dtype, key_len=key_len)

        all_hidden_states = []
        try:
            for index, layer in enumerate(layers):
                if output_hidden_states:
                    all_hidden_states.append(hidden_states)
                kv = None if past_key_values is None else functools.partial(past_key_values.update, layer_idx=index)
                hidden_states = layer(hidden_states, cos, sin, mask, kv)
        finally:
            if past_key_values is not None:
                past_key_values.finish()
        hidden_states = self.get_submodule(self._norm_path)(hidden_states)
        head = self.get_output_embeddings()
        logits = head(hidden_states) if isinstance(head, nn.Linear) else F.linear(hidden_states, head.weight)
        logits = self._scale_logits(logits)

        hidden = (*all_hidden_states, hidden_states) if output_hidden_states else None
        if not (self.config.return_dict if return_dict is None else return_dict):
            return (logits,) if hidden is None else (logits, hidden)
        return MaskedLMOutput(logits=logits, hidden_states=hidden)
