"""Dream (Dream-org/Dream-v0-*): a Qwen2-style transformer with bidirectional attention, under its own weight names.

The modules carry the names of the published checkpoints' tensors, so their safetensors load as they are:

    model.embed_tokens.weight
    model.layers.{i}.input_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}     (query/key/value with bias)
    model.layers.{i}.self_attn.o_proj.weight                  (output without bias)
    model.layers.{i}.post_attention_layernorm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.weight
    model.norm.weight
    lm_head.weight                                            (absent when `tie_word_embeddings`)

Dream predicts the token at position `i` from the logits at position `i - 1` (it was initialised from the
autoregressive Qwen2.5); [`EntRGiPipeline`] reads that from the model type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_dream import DreamConfig
from .layers import (
    RMSNorm,
    apply_rotary,
    attention_mask_4d,
    bidirectional_attention,
    default_position_ids,
    refuse_unsupported_kwargs,
    rotary_cos_sin,
)


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states, cos, sin, mask):
        batch, seq_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim)
        # Dream rotates in the model's dtype, with float32 angles cast to it.
        cos, sin = cos.to(query.dtype), sin.to(query.dtype)
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        dropout = self.dropout if self.training else 0.0
        output = bidirectional_attention(query, key, value.transpose(1, 2), mask, dropout)
        return self.o_proj(output.transpose(1, 2).reshape(batch, seq_len, -1))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(self, hidden_states, cos, sin, mask):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin, mask)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DreamBaseModel(nn.Module):
    """Embedding, layers and final norm: the `model.` part of a Dream checkpoint."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(PreTrainedModel):
    r"""
    Dream's masked diffusion LM (the published `DreamModel`'s forward pass), loading Dream checkpoints as they are.

    Registered with transformers' `AutoModel` and `AutoModelForMaskedLM` for the model type `"Dream"` when
    `entrgi_pipelines` is imported, so `AutoModel.from_pretrained("Dream-org/Dream-v0-Instruct-7B")` builds this
    class without running the repository's code; `trust_remote_code=True` still selects the repository's own
    `DreamModel` (and its `diffusion_generate`). The parameter names are the checkpoint's (see the module docstring):
    no key map is needed.

    Attention is bidirectional (no causal mask). Left padding is invisible to the real tokens when the padding mask
    and position ids that [`EntRGiPipeline`] passes are given. The forward pass is differentiable with respect to
    `inputs_embeds`. Not implemented: the key/value cache and `diffusion_generate` of the published code (the pipeline
    only calls the forward pass), RoPE scaling, and returning attention weights.

    Args:
        config ([`DreamConfig`]): the model's configuration.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.models import DreamConfig, DreamModel

        >>> config = DreamConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                      num_attention_heads=4, num_key_value_heads=2, mask_token_id=63, pad_token_id=0)
        >>> model = DreamModel(config).eval()
        >>> sorted(model.state_dict())[:3]
        ['lm_head.weight', 'model.embed_tokens.weight', 'model.layers.0.input_layernorm.weight']
        >>> model(torch.tensor([[5, 6, 63, 63]])).logits.shape
        torch.Size([1, 4, 64])
        ```
    """

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        if getattr(config, "rope_scaling", None) is not None:
            raise ValueError(
                f"`rope_scaling` {config.rope_scaling!r} is not supported by the native DreamModel (Dream-v0 uses "
                "none): load the repository's own code with `trust_remote_code=True`."
            )
        if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
            raise ValueError(
                f"`hidden_size` ({config.hidden_size}) must be divisible by `num_attention_heads` "
                f"({config.num_attention_heads}), and that by `num_key_value_heads` ({config.num_key_value_heads})."
            )
        self.model = DreamBaseModel(config)
        self.lm_head = (
            None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # torch.nn.init (not `.data`): transformers 5 skips what a checkpoint already loaded through these functions.
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.model.embed_tokens if self.lm_head is None else self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        r"""
        Logits for every position (Dream's: position `i - 1` scores the token at `i`).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): token ids; or `inputs_embeds`.
            attention_mask (`torch.Tensor`, *optional*): a `(batch, seq)` padding mask (1 for real tokens), or a
                boolean `(batch, 1, seq, seq)` pairwise mask (True: may attend), as Dream's own generation builds it
                and [`EntRGiPipeline`] passes it, or a float additive `(batch, 1, seq, seq)` mask.
            position_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): RoPE positions; defaults to
                `0 .. seq - 1`. With left padding, pass the positions counted from each row's first real token.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq, hidden)`, *optional*): input embeddings
                instead of `input_ids` (differentiable).
            output_hidden_states (`bool`, *optional*): also return the input of every layer and the final normed
                hidden states.
            return_dict (`bool`, *optional*): return a `MaskedLMOutput` (default) or a tuple.
            kwargs: accepted for compatibility with callers of the published code when unset (`use_cache=False`,
                `past_key_values=None`, `output_attentions=False`); anything else is refused.

        Returns:
            `MaskedLMOutput` with `logits` `(batch, seq, vocab)` (and `hidden_states` when asked), or a tuple.
        """
        refuse_unsupported_kwargs(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        hidden_states = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq_len = hidden_states.shape[:2]
        if position_ids is None:
            position_ids = default_position_ids(batch, seq_len, hidden_states.device)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rotary_cos_sin(position_ids, head_dim, self.config.rope_theta)
        mask = attention_mask_4d(attention_mask, batch, seq_len)

        all_hidden_states = []
        for layer in self.model.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(hidden_states, cos, sin, mask)
        hidden_states = self.model.norm(hidden_states)
        head = self.get_output_embeddings()
        logits = head(hidden_states) if isinstance(head, nn.Linear) else F.linear(hidden_states, head.weight)

        hidden = (*all_hidden_states, hidden_states) if output_hidden_states else None
        if not (self.config.return_dict if return_dict is None else return_dict):
            return (logits,) if hidden is None else (logits, hidden)
        return MaskedLMOutput(logits=logits, hidden_states=hidden)
