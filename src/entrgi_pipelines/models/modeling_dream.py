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

from torch import nn

# diffusers loads a saved pipeline's component by looking up its loadable base class (`PreTrainedModel`) in the
# module that defines the component's class: the name must be importable from here.
from transformers import PreTrainedModel  # noqa: F401
from transformers.activations import ACT2FN

from .configuration_dream import DreamConfig
from .layers import RMSNorm, apply_rotary, bidirectional_attention
from .modeling_base import BidirectionalLM


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

    def forward(self, hidden_states, cos, sin, mask, kv=None):
        batch, seq_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim)
        value = value.transpose(1, 2)
        # Dream rotates in the model's dtype, with float32 angles cast to it.
        cos, sin = cos.to(query.dtype), sin.to(query.dtype)
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if kv is not None:  # a key/value cache: stores these, or adds the cached columns around them
            key, value = kv(key, value)
        dropout = self.dropout if self.training else 0.0
        output = bidirectional_attention(query, key, value, mask, dropout)
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

    def forward(self, hidden_states, cos, sin, mask, kv=None):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin, mask, kv)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DreamBaseModel(nn.Module):
    """Embedding, layers and final norm: the `model.` part of a Dream checkpoint."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(BidirectionalLM):
    r"""
    Dream's masked diffusion LM (the published `DreamModel`'s forward pass), loading Dream checkpoints as they are.

    Registered with transformers' `AutoModel` and `AutoModelForMaskedLM` for the model type `"Dream"` when
    `entrgi_pipelines` is imported, so `AutoModel.from_pretrained("Dream-org/Dream-v0-Instruct-7B")` builds this
    class without running the repository's code; `trust_remote_code=True` still selects the repository's own
    `DreamModel` (and its `diffusion_generate`). The parameter names are the checkpoint's (see the module docstring):
    no key map is needed. Its forward pass is [`BidirectionalLM.forward`]; position `i - 1` scores the token at `i`.

    Attention is bidirectional (no causal mask). Left padding is invisible to the real tokens when the padding mask
    and position ids that [`EntRGiPipeline`] passes are given. The forward pass is differentiable with respect to
    `inputs_embeds`. It takes Fast-dLLM's approximate key/value cache ([`FullAttentionKVCache`], the pipeline's
    `kv_cache="prefix"` and `"dual"`). Not implemented: the published code's own cache and `diffusion_generate` (the
    pipeline only calls the forward pass), RoPE scaling (a config saved by transformers 5, with `rope_parameters` of
    `rope_type` "default", is unscaled and loads), and returning attention weights.

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
    _no_split_modules = ["DreamDecoderLayer"]
    _embedding_path = "model.embed_tokens"
    _layers_path = "model.layers"
    _norm_path = "model.norm"
    _head_path = "lm_head"

    def __init__(self, config: DreamConfig):
        super().__init__(config)
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
