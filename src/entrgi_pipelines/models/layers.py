"""The pieces Dream and LLaDA share: RMS normalisation, rotary position embeddings and bidirectional attention.

Plain torch (`torch.nn.functional.scaled_dot_product_attention`), nothing from transformers' attention interface,
so that one code path runs on every transformers version this package supports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

# `enable_gqa` arrived in torch 2.5; setup.py allows 2.1, where the key/value heads are copied per query head instead.
_SDPA_HAS_GQA = torch.__version__ >= "2.5"


class RMSNorm(nn.Module):
    """RMS normalisation computed in float32, cast back to the input's dtype, then scaled (as Llama, Qwen2, OLMo).

    `weight` is the learnt scale; `bias` (LLaDA's `bias_for_layer_norm`) is added after it when present.
    """

    def __init__(self, size: int, eps: float, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        hidden_states = self.weight * hidden_states.to(dtype)
        return hidden_states if self.bias is None else hidden_states + self.bias

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def default_position_ids(batch_size: int, seq_len: int, device: torch.device) -> torch.LongTensor:
    """`0 .. seq_len - 1` for every row: the positions of a sequence without left padding."""
    return torch.arange(seq_len, device=device).expand(batch_size, seq_len)


def rotary_cos_sin(position_ids: torch.LongTensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine of the rotary angles, float32, `(B, 1, S, head_dim)` (broadcast over the heads).

    Position `p` turns the pair `(x[j], x[j + head_dim / 2])` by `p * theta ** (-2j / head_dim)`: the "rotate half"
    layout of GPT-NeoX, Llama, Qwen2 and OLMo.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = position_ids.float()[..., None] * inv_freq  # (B, S, head_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin`, in the dtype of `cos` (cast `cos`/`sin` or `x` beforehand to choose it)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def rope_base(config: PretrainedConfig, model_name: str) -> float:
    """The RoPE base of `config`, refusing RoPE scaling (the native classes implement unscaled RoPE only).

    transformers 5 saves RoPE settings as `rope_parameters` (`{"rope_type": "default", "rope_theta": 1e6}` for none),
    and reads a legacy `rope_scaling` into it; transformers 4 keeps `rope_scaling`. A `rope_theta` there wins over the
    `rope_theta` field, as transformers 5 reads it (a config written with only `rope_parameters` leaves the field at
    its default).
    """
    for field in ("rope_parameters", "rope_scaling"):
        parameters = getattr(config, field, None)
        if parameters:
            break
    else:
        return float(config.rope_theta)
    unscaled = {"rope_type", "type", "rope_theta"}
    rope_type = parameters.get("rope_type", parameters.get("type", "default")) if isinstance(parameters, dict) else None
    if rope_type != "default" or not set(parameters) <= unscaled:
        raise ValueError(
            f"RoPE scaling (`{field}` = {parameters!r}) is not supported by the native {model_name}, which implements "
            'unscaled RoPE only (`rope_scaling` None, or `rope_parameters` with `rope_type` "default" and '
            "`rope_theta`): load the repository's own code with `trust_remote_code=True`."
        )
    return float(parameters.get("rope_theta", config.rope_theta))


@dataclass(frozen=True)
class AttentionMask:
    """The attention mask of one forward pass, in the form SDPA takes, built once and shared by every layer.

    Attributes:
        mask (`torch.Tensor`, *optional*): boolean, broadcastable to `(B, H, S, S)` (True: the query may attend to the
            key), or additive in the model's dtype; None when the caller gave none.
        empty (`torch.Tensor`, *optional*): boolean `(B, 1 or H, S or 1, 1)`, True for the query rows that `mask`
            leaves with no key at all (a padded position under a pairwise mask, or a row of padding only); those rows
            attend to every key in `mask` and their output is set to zero by [`bidirectional_attention`].
    """

    mask: torch.Tensor | None = None
    empty: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        attention_mask: torch.Tensor | None,
        batch_size: int,
        seq_len: int,
        dtype: torch.dtype,
        key_len: int | None = None,
    ) -> AttentionMask:
        """Reads a `(B, S_k)` padding mask (1 or True for real tokens: padded keys are hidden from every query), a
        boolean or integer `(B, 1 or H, S, S_k)` pairwise mask (Dream's own `generate` builds one from the padding
        mask) or a floating-point `(B, 1 or H, S, S_k)` additive mask (0 to attend, a large negative number to hide;
        cast to `dtype`, no empty-row handling). `S` is the number of queries (`seq_len`) and `S_k` that of keys
        (`key_len`, by default `seq_len`; more with a [`FullAttentionKVCache`], whose cached keys are attended to).

        A mask that hides nothing is kept, not dropped: finding that out (`mask.all()`) reads the tensor back on
        the host, a device sync every forward pass. What it would save on CPU (benchmarks/native_models.py, one
        thread, B = 4, 8 query / 2 key-value heads, S = 256, D = 64; two runs on a loaded machine): SDPA takes 1-10%
        longer with an all-True mask than with none, a 4-layer, width-512 Dream forward 0-4% (within the noise).
        A caller that knows there is no padding may pass no mask.
        """
        if attention_mask is None:
            return cls()
        key_len = seq_len if key_len is None else key_len
        if attention_mask.dim() == 2:
            if tuple(attention_mask.shape) != (batch_size, key_len):
                raise ValueError(
                    f"`attention_mask` of shape {tuple(attention_mask.shape)} does not match the "
                    f"(batch, keys) = {(batch_size, key_len)} of this forward pass (the input's sequence, or the "
                    "cached one with a cache)."
                )
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S_k): the same keys for every query
        elif attention_mask.dim() == 4:
            if attention_mask.shape[0] != batch_size or tuple(attention_mask.shape[-2:]) != (seq_len, key_len):
                raise ValueError(
                    f"`attention_mask` of shape {tuple(attention_mask.shape)} does not match (batch, 1 or heads, "
                    f"queries, keys) = ({batch_size}, 1, {seq_len}, {key_len})."
                )
            if attention_mask.is_floating_point():
                return cls(mask=attention_mask.to(dtype))
            mask = attention_mask.bool()
        else:
            raise ValueError(
                f"`attention_mask` must be (batch, sequence) or (batch, 1 or heads, sequence, sequence), got "
                f"{attention_mask.dim()} dimensions."
            )
        empty = ~mask.any(dim=-1, keepdim=True)
        return cls(mask=mask | empty, empty=empty)


def bidirectional_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, dropout: float = 0.0
) -> torch.Tensor:
    """Attention without a causal mask; `query` `(B, H, S, D)`, `key`/`value` `(B, H_kv, S, D)` (grouped queries).

    Each key/value head serves its group of `H / H_kv` query heads through SDPA's `enable_gqa`, without copying it
    per query head. A query row that the mask leaves with no key at all (`mask.empty`) gets a zero output, as
    torch's own math kernel gives it, on every backend: softmax over nothing would be NaN, and NaN in a padded
    position's hidden state would reach every row at the next layer through `0 * NaN` in the attention product.
    """
    grouped = key.shape[1] != query.shape[1]
    if grouped and not _SDPA_HAS_GQA:
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    gqa = {"enable_gqa": True} if grouped and _SDPA_HAS_GQA else {}
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask.mask, dropout_p=dropout, is_causal=False, **gqa
    )
    return output if mask.empty is None else output.masked_fill(mask.empty, 0.0)


def refuse_unsupported_kwargs(kwargs: dict) -> None:
    """Arguments of the published forward passes that the native ones accept only unset (no attention weights, no
    loss; the cache is a [`FullAttentionKVCache`], never the published code's tuples)."""
    accepted_unset = {"use_cache", "past_key_values", "output_attentions", "cache_position", "labels"}
    for name, value in kwargs.items():
        if name not in accepted_unset:
            raise TypeError(f"forward() got an unexpected keyword argument {name!r}.")
        if value is not None and value is not False:
            raise ValueError(
                f"`{name}` is not supported by the native Dream and LLaDA classes in this form (their key/value "
                "cache is `past_key_values=FullAttentionKVCache()`, with `cache_position` to read it; no attention "
                "weights, no loss): leave it unset, or load the repository's own code with `trust_remote_code=True`."
            )
