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
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_llada import LLaDAConfig
from .layers import (
    RMSNorm,
    apply_rotary,
    attention_mask_4d,
    bidirectional_attention,
    default_position_ids,
    refuse_unsupported_kwargs,
    rotary_cos_sin,
)


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

    def attention(self, hidden_states, cos, sin, mask):
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
        dropout = self.attention_dropout if self.training else 0.0
        output = bidirectional_attention(query, key, value, mask, dropout)
        return self.attn_out(output.transpose(1, 2).reshape(batch, seq_len, -1))

    def forward(self, hidden_states, cos, sin, mask):
        dropout = self.residual_dropout if self.training else 0.0
        attended = self.attention(self.attn_norm(hidden_states), cos, sin, mask)
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


class LLaDAModelLM(PreTrainedModel):
    r"""
    LLaDA's masked diffusion LM (the published `LLaDAModelLM`'s forward pass), loading LLaDA checkpoints as they are.

    Registered with transformers' `AutoModel` and `AutoModelForMaskedLM` for the model type `"llada"` when
    `entrgi_pipelines` is imported, so `AutoModel.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")` builds this class
    without running the repository's code; `trust_remote_code=True` still selects the repository's own
    `LLaDAModelLM`. The parameter names are the checkpoint's (see the module docstring): no key map is needed.

    Attention is bidirectional (no causal mask). Unlike the published forward pass, this one takes `position_ids`,
    so that left padding is invisible to the real tokens (the published code always numbers positions `0 .. S - 1`);
    without them the two agree. The forward pass is differentiable with respect to `inputs_embeds`. Not implemented:
    the published `attention_bias` argument (a 4D boolean or additive `attention_mask` does the same), the
    key/value cache (which the published forward refuses too), activation checkpointing, and OLMo variants other than
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
    base_model_prefix = "model"
    _no_split_modules = ["LLaDALlamaBlock"]

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        _check_supported(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # torch.nn.init (not `.data`): transformers 5 skips what a checkpoint already loaded through these functions.
        std = getattr(self.config, "init_std", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Module:
        return self.model.transformer.wte if self.config.weight_tying else self.model.transformer.ff_out

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
        Logits for every position (LLaDA's: position `i` scores the token at `i`).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): token ids; or `inputs_embeds`.
            attention_mask (`torch.Tensor`, *optional*): a `(batch, seq)` padding mask (1 for real tokens: padded
                keys are hidden from every query, as in the published code), or a boolean `(batch, 1, seq, seq)`
                pairwise mask (True: may attend), or a float additive `(batch, 1, seq, seq)` mask.
            position_ids (`torch.LongTensor` of shape `(batch, seq)`, *optional*): RoPE positions; defaults to
                `0 .. seq - 1`. With left padding, pass the positions counted from each row's first real token.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq, d_model)`, *optional*): input embeddings
                instead of `input_ids` (differentiable).
            output_hidden_states (`bool`, *optional*): also return the input of every block and the final normed
                hidden states.
            return_dict (`bool`, *optional*): return a `MaskedLMOutput` (default) or a tuple.
            kwargs: accepted for compatibility with callers of the published code when unset (`use_cache=False`,
                `past_key_values=None`, `output_attentions=False`); anything else is refused.

        Returns:
            `MaskedLMOutput` with `logits` `(batch, seq, embedding_size)` (and `hidden_states` when asked), or a
            tuple.
        """
        refuse_unsupported_kwargs(kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        config = self.config
        transformer = self.model.transformer
        hidden_states = transformer.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if config.input_emb_norm:
            hidden_states = hidden_states * config.d_model**0.5
        hidden_states = F.dropout(hidden_states, config.embedding_dropout, self.training)
        batch, seq_len = hidden_states.shape[:2]
        if position_ids is None:
            position_ids = default_position_ids(batch, seq_len, hidden_states.device)
        cos, sin = rotary_cos_sin(position_ids, config.d_model // config.n_heads, config.rope_theta)
        mask = attention_mask_4d(attention_mask, batch, seq_len)

        all_hidden_states = []
        for block in transformer.blocks:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states = block(hidden_states, cos, sin, mask)
        hidden_states = transformer.ln_f(hidden_states)
        head = self.get_output_embeddings()
        logits = head(hidden_states) if isinstance(head, nn.Linear) else F.linear(hidden_states, head.weight)
        if config.scale_logits:
            logits = logits * (1 / math.sqrt(config.d_model))

        hidden = (*all_hidden_states, hidden_states) if output_hidden_states else None
        if not (config.return_dict if return_dict is None else return_dict):
            return (logits,) if hidden is None else (logits, hidden)
        return MaskedLMOutput(logits=logits, hidden_states=hidden)
