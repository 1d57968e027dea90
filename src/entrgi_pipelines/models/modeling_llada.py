"""LLaDA (GSAI-ML/LLaDA-8B-*): an OLMo "llama"-block transformer with bidirectional attention, under its own names.

The modules carry the names of the published checkpoints' tensors, so their safetensors load as they are:

    model.transformer.wte.weight                                  token embedding (embedding_size x d_model)
    model.transformer.blocks.{i}.attn_norm.weight                 RMS norm before attention
    model.transformer.blocks.{i}.{q,k,v}_proj.weight              query/key/value (bias with include_qkv_bias)
    model.transformer.blocks.{i}.attn_out.weight                  attention output
    model.transformer.blocks.{i}.ff_norm.weight                   RMS norm before the MLP
    model.transformer.blocks.{i}.ff_proj.weight                   MLP gate (SiLU)
    model.transformer.blocks.{i}.up_proj.weight                   MLP up projection
    model.transformer.blocks.{i}.ff_out.weight                    MLP down projection
    model.transformer.ln_f.weight                                 final RMS norm
    model.transformer.ff_out.weight                               output projection (absent with weight_tying)

LLaDA predicts the token at position `i` from the logits at position `i` (no shift).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# diffusers loads a saved pipeline's component by looking up its loadable base class (`PreTrainedModel`) in the
# module that defines the component's class: the name must be importable from here.
from transformers import PreTrainedModel  # noqa: F401

from .configuration_llada import LLaDAConfig
from .layers import RMSNorm, apply_rotary, bidirectional_attention
from .modeling_base import BidirectionalLM


def _check_supported(config: LLaDAConfig) -> None:
    """Refuses LLaDA/OLMo variants the native class does not implement, naming the field."""
    required = {
        "block_type": "llama",
        "layer_norm_type": "rms",
        "activation_type": "silu",
        "rope": True,
        "alibi": False,
        "attention_layer_norm": False,
        "layer_norm_with_affine": True,
        "block_group_size": 1,
    }
    for name, value in required.items():
        if getattr(config, name) != value:
            raise ValueError(
                f"LLaDAConfig.{name}={getattr(config, name)!r} is not supported by the native LLaDAModelLM, which "
                f"implements LLaDA-8B's architecture ({name}={value!r}): load the repository's own code with "
                "`trust_remote_code=True`."
            )
    if config.d_model % config.n_heads or config.n_heads % config.effective_n_kv_heads:
        raise ValueError(
            f"`d_model` ({config.d_model}) must be divisible by `n_heads` ({config.n_heads}), and that by the "
            f"key/value heads ({config.effective_n_kv_heads})."
        )
    if (config.embedding_size or config.vocab_size) < config.vocab_size:
        raise ValueError(f"`embedding_size` ({config.embedding_size}) must be at least `vocab_size`.")


class LLaDALlamaBlock(nn.Module):
    """One LLaDA block: `x + attn(attn_norm(x))`, then `+ ff_out(silu(ff_proj(h)) * up_proj(h))`, h = ff_norm(x)."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.effective_n_kv_heads
        self.head_dim = config.d_model // config.n_heads
        self.rope_full_precision = config.rope_full_precision
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = config.residual_dropout
        bias = config.include_bias
        norm_bias = bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
        qkv_bias = bias or config.include_qkv_bias
        self.attn_norm = RMSNorm(config.d_model, config.rms_norm_eps, bias=norm_bias)
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=qkv_bias)
        self.k_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=bias)
        self.ff_norm = RMSNorm(config.d_model, config.rms_norm_eps, bias=norm_bias)
        self.ff_proj = nn.Linear(config.d_model, config.mlp_width, bias=bias)
        self.up_proj = nn.Linear(config.d_model, config.mlp_width, bias=bias)
        self.ff_out = nn.Linear(config.mlp_width, config.d_model, bias=bias)

    def attention(self, hidden_states, cos, sin, mask, kv=None):
        batch, seq_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # LLaDA rotates in float32 (`rope_full_precision`) and casts the result back.
        dtype = query.dtype
        if self.rope_full_precision:
            query, key = query.float(), key.float()
        cos, sin = cos.to(query.dtype), sin.to(query.dtype)
        query, key = apply_rotary(query, cos, sin).to(dtype), apply_rotary(key, cos, sin).to(dtype)
        if kv is not None:  # a key/value cache: stores these, or adds the cached columns around them
            key, value = kv(key, value)
        dropout = self.attention_dropout if self.training else 0.0
        output = bidirectional_attention(query, key, value, mask, dropout)
        return self.attn_out(output.transpose(1, 2).reshape(batch, seq_len, -1))

    def forward(self, hidden_states, cos, sin, mask, kv=None):
        dropout = self.residual_dropout if self.training else 0.0
        attended = self.attention(self.attn_norm(hidden_states), cos, sin, mask, kv)
        hidden_states = hidden_states + F.dropout(attended, dropout, self.training)
        normed = self.ff_norm(hidden_states)
        mlp = self.ff_out(F.silu(self.ff_proj(normed)) * self.up_proj(normed))
        return hidden_states + F.dropout(mlp, dropout, self.training)


class LLaDAModel(nn.Module):
    """The `model.` part of a LLaDA checkpoint: `transformer.{wte, blocks, ln_f, ff_out}`."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        rows = config.embedding_size or config.vocab_size
        norm_bias = config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm
        modules = {
            "wte": nn.Embedding(rows, config.d_model),
            "blocks": nn.ModuleList(LLaDALlamaBlock(config) for _ in range(config.n_layers)),
            "ln_f": RMSNorm(config.d_model, config.rms_norm_eps, bias=norm_bias),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, rows, bias=config.include_bias)
        self.transformer = nn.ModuleDict(modules)


class LLaDAModelLM(BidirectionalLM):
    r"""
    LLaDA's masked diffusion LM (the published `LLaDAModelLM`'s forward pass), loading LLaDA checkpoints as they are.

    Registered with transformers' `AutoModel` and `AutoModelForMaskedLM` for the model type `"llada"` when
    `entrgi_pipelines` is imported, so `AutoModel.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")` builds this class
    without running the repository's code; `trust_remote_code=True` still selects the repository's own
    `LLaDAModelLM`. The parameter names are the checkpoint's (see the module docstring): no key map is needed. Its
    forward pass is [`BidirectionalLM.forward`]; position `i` scores the token at `i`.

    Attention is bidirectional (no causal mask). Unlike the published forward pass, this one takes `position_ids`,
    so that left padding is invisible to the real tokens (the published code always numbers positions `0 .. S - 1`);
    without them the two agree. The forward pass is differentiable with respect to `inputs_embeds`. It takes
    Fast-dLLM's approximate key/value cache ([`FullAttentionKVCache`], the pipeline's `kv_cache="prefix"` and
    `"dual"`; the published forward refuses a cache). Not implemented: the published `attention_bias` argument (a 4D
    boolean or additive `attention_mask` does the same), activation checkpointing, and OLMo variants other than
    LLaDA-8B's "llama" block (refused with an error naming the field).

    Args:
        config ([`LLaDAConfig`]): the model's configuration.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.models import LLaDAConfig, LLaDAModelLM

        >>> config = LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, block_type="llama",
        ...                      activation_type="silu", layer_norm_type="rms", rope=True, vocab_size=64,
        ...                      embedding_size=64, weight_tying=False, mask_token_id=63)
        >>> model = LLaDAModelLM(config).eval()
        >>> sorted(model.state_dict())[:2]
        ['model.transformer.blocks.0.attn_norm.weight', 'model.transformer.blocks.0.attn_out.weight']
        >>> model(torch.tensor([[5, 6, 63, 63]])).logits.shape
        torch.Size([1, 4, 64])
        ```
    """

    config_class = LLaDAConfig
    _no_split_modules = ["LLaDALlamaBlock"]
    _embedding_path = "model.transformer.wte"
    _layers_path = "model.transformer.blocks"
    _norm_path = "model.transformer.ln_f"
    _head_path = "model.transformer.ff_out"  # absent with `weight_tying`

    def __init__(self, config: LLaDAConfig):
        _check_supported(config)
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def _initializer_std(self) -> float:
        return getattr(self.config, "init_std", 0.02)

    def _scale_embeddings(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.config.input_emb_norm:
            hidden_states = hidden_states * self.config.d_model**0.5
        return F.dropout(hidden_states, self.config.embedding_dropout, self.training)

    def _scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * (1 / math.sqrt(self.config.d_model)) if self.config.scale_logits else logits
