"""Configurations of the block-diffusion models SDAR / TraDo (model type `"sdar"`) and Fast-dLLM v2 (model type
`"Fast_dLLM_Qwen"`), read from their checkpoints' own `config.json`.

Both subclass transformers' own configuration of the base architecture (`Qwen3Config`, `Qwen2Config`), so the
architecture fields (and RoPE, on every transformers version) mean what they mean there; they add the block size,
the mask token and whether the logits are shifted.
"""

from __future__ import annotations

from transformers import Qwen2Config, Qwen3Config


class _PublishedFileMixin:
    """What the native configs change in a published `config.json` when they read it, and drop when they write."""

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # The published configs carry `"attn_implementation": "flex_attention"` (their training kernel), which
        # transformers 5 honours and which aborts on CPU: the file's value is dropped, so the model runs SDPA. A
        # caller's `from_pretrained(..., attn_implementation=...)` arrives in `kwargs` and is still applied.
        if config_dict.get("attn_implementation") == "flex_attention":
            config_dict = {k: v for k, v in config_dict.items() if k != "attn_implementation"}
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # A checkpoint saved by the native class holds no repository code: an `auto_map` read from the published
        # config.json would point at modeling files the saved folder lacks.
        output.pop("auto_map", None)
        # transformers 5 writes RoPE as `rope_parameters` only; the published files (and transformers 4, which reads
        # no `rope_parameters` and would fall back to a base of 10000) have `rope_theta` and `rope_scaling`.
        rope = output.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            output.setdefault("rope_theta", rope["rope_theta"])
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            output.setdefault("rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling)
        return output


def _refuse_sliding_window(config) -> None:
    if getattr(config, "use_sliding_window", False):
        raise ValueError(
            f"`use_sliding_window=True` is not supported by the native {type(config).__name__} (the published "
            "block-diffusion checkpoints use full attention): set `use_sliding_window` to False."
        )


class SDARConfig(_PublishedFileMixin, Qwen3Config):
    r"""
    Configuration of [`SDARForCausalLM`]: SDAR (JetLM/SDAR-*) and TraDo (Gen-Verse/TraDo-*), Qwen3 transformers
    trained as block-diffusion models (full attention inside a block of `block_size` tokens, causal across blocks).

    Every field of `Qwen3Config` keeps its meaning (a published SDAR `config.json`, e.g. SDAR-1.7B-Chat's: hidden size
    2048, 28 layers, 16 query and 8 key/value heads of 128, `rope_theta` 1e6, vocabulary 151936). The published
    training-only fields (`fuse_cross_entropy`, `micro_forward`, `skip_checkpoint`, `ep_size`, `use_deepep`,
    `debug`) are kept as plain attributes so that a saved config round-trips.

    Args:
        block_size (`int`, *optional*): tokens per diffusion block (4 for the published SDAR checkpoints). A config
            without it loads, but the forward pass refuses to run until it is set (`model.config.block_size = 4`):
            the block size is part of the attention pattern and no default would be right for every checkpoint.
        mask_token_id (`int`, *optional*): the mask token (`<|MASK|>`, 151669 in the published tokenizer); None when
            the config does not name it (then take it from the tokenizer).
        kwargs: the fields of `Qwen3Config`; `use_sliding_window=True` is refused. A `config.json`'s
            `"attn_implementation": "flex_attention"` (as published) is dropped when the file is read, so the model
            runs SDPA; a caller's `from_pretrained(..., attn_implementation=...)` is honoured.

    Examples:
        ```py
        >>> from entrgi_pipelines.models import SDARConfig

        >>> published = {"model_type": "sdar", "block_size": 4, "mask_token_id": 63,
        ...              "attn_implementation": "flex_attention", "vocab_size": 64, "hidden_size": 32,
        ...              "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        ...              "num_key_value_heads": 2, "head_dim": 8}
        >>> config = SDARConfig.from_dict(published)
        >>> config.model_type, config.block_size, config.logits_shift, config._attn_implementation is None
        ('sdar', 4, False, True)
        ```
    """

    model_type = "sdar"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, block_size: int | None = None, mask_token_id: int | None = None, **kwargs):
        kwargs.pop("logits_shift", None)  # fixed by the architecture, not a setting
        super().__init__(**kwargs)
        self.block_size = block_size
        self.mask_token_id = mask_token_id
        _refuse_sliding_window(self)

    @property
    def logits_shift(self) -> bool:
        """False: the logits at position `i` score the token at position `i`."""
        return False


class Fast_dLLM_QwenConfig(_PublishedFileMixin, Qwen2Config):  # noqa: N801  (the published class name)
    r"""
    Configuration of [`Fast_dLLM_QwenForCausalLM`]: Fast-dLLM v2 (Efficient-Large-Model/Fast_dLLM_v2_1.5B, _7B), a
    Qwen2.5 transformer trained as a block-diffusion model, whose logits are shifted as Dream's.

    Every field of `Qwen2Config` keeps its meaning (Qwen2.5's geometry: queries, keys and values with biases, any
    head counts, optionally tied embeddings), plus `bd_size`, the published name of the block size; `block_size`
    reads and writes the same value, so that callers read one name for every block-diffusion model. A Llama-geometry
    model (no attention biases, e.g. a SmolLM2 converted to this format) is stored with zero q/k/v biases.

    Args:
        bd_size (`int`, defaults to 32): tokens per diffusion block (32 for the published checkpoints; their decoder
            also splits a block into sub-blocks of 8, a decoding choice, not part of the model).
        mask_token_id (`int`, *optional*): the mask token (`|<MASK>|`, 151665 in the published tokenizer); None when
            the config does not name it (the published config does not: take it from the tokenizer).
        kwargs: the fields of `Qwen2Config`; `use_sliding_window=True` is refused. A `config.json`'s
            `"attn_implementation": "flex_attention"` is dropped when the file is read (the model runs SDPA).

    Examples:
        ```py
        >>> from entrgi_pipelines.models import Fast_dLLM_QwenConfig

        >>> config = Fast_dLLM_QwenConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                               num_attention_heads=4, num_key_value_heads=2, bd_size=8)
        >>> config.model_type, config.block_size, config.logits_shift
        ('Fast_dLLM_Qwen', 8, True)
        ```
    """

    model_type = "Fast_dLLM_Qwen"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {**Qwen2Config.attribute_map, "block_size": "bd_size"}

    def __init__(self, bd_size: int | None = 32, mask_token_id: int | None = None, **kwargs):
        kwargs.pop("logits_shift", None)
        if "block_size" in kwargs:  # the alias, given to the constructor
            bd_size = kwargs.pop("block_size")
        super().__init__(**kwargs)
        self.bd_size = bd_size
        self.mask_token_id = mask_token_id
        _refuse_sliding_window(self)

    @property
    def logits_shift(self) -> bool:
        """True: the logits at position `i - 1` score the token at position `i` (Dream's convention)."""
        return True
