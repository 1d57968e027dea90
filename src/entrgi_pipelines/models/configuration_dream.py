"""Configuration of Dream, read from a Dream checkpoint's own `config.json` (model type `"Dream"`)."""

from __future__ import annotations

from transformers import PretrainedConfig


class DreamConfig(PretrainedConfig):
    r"""
    Configuration of [`DreamModel`]: a Qwen2-style transformer run with bidirectional attention (Dream-v0).

    The field names and defaults are those of the published `DreamConfig`, so that a Dream checkpoint's `config.json`
    (e.g. Dream-org/Dream-v0-Instruct-7B's: 28 layers, hidden size 3584, 28 query and 4 key/value heads, RoPE base
    1e6, vocabulary 152064) means the same here as there. Fields the native model has no use for (`use_cache`,
    `sliding_window`, `max_window_layers`: the published attention ignores the window too) are kept, so that a saved
    config still loads with the repository's own code.

    Args:
        vocab_size (`int`, defaults to 151936): rows of the token embedding and the output projection.
        hidden_size (`int`, defaults to 4096): model width.
        intermediate_size (`int`, defaults to 22016): width of the gated MLP.
        num_hidden_layers (`int`, defaults to 32): transformer layers.
        num_attention_heads (`int`, defaults to 32): query heads; the head size is `hidden_size / num_attention_heads`.
        num_key_value_heads (`int`, *optional*, defaults to 32): key/value heads (grouped-query attention); `None`
            means `num_attention_heads`.
        hidden_act (`str`, defaults to `"silu"`): activation of the MLP's gate.
        max_position_embeddings (`int`, defaults to 32768): the longest sequence the pipeline will build.
        initializer_range (`float`, defaults to 0.02): standard deviation of the initial weights.
        rms_norm_eps (`float`, defaults to 1e-6): epsilon of the RMS norms.
        use_cache (`bool`, defaults to `False`): kept for the published code; the native model has no cache.
        tie_word_embeddings (`bool`, defaults to `False`): use the token embedding as the output projection.
        rope_theta (`float`, defaults to 10000.0): RoPE base.
        rope_scaling (`dict`, *optional*): RoPE scaling; [`DreamModel`] supports none (`None`, as every Dream-v0
            checkpoint; or `rope_type` "default"). A config saved by transformers 5 has `rope_parameters`
            (`{"rope_type": "default", "rope_theta": ...}`) instead, which loads too: its `rope_theta` wins.
        use_sliding_window (`bool`, defaults to `False`): kept as published; the attention has no window.
        sliding_window (`int`, defaults to 4096): kept as published (`None` unless `use_sliding_window`).
        max_window_layers (`int`, defaults to 28): kept as published.
        attention_dropout (`float`, defaults to 0.0): dropout on the attention weights in training mode.
        mask_token_id (`int`, defaults to 151666): the mask token.
        pad_token_id (`int`, defaults to 151643): the padding token.

    Examples:
        ```py
        >>> from entrgi_pipelines.models import DreamConfig

        >>> config = DreamConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                      num_attention_heads=4, num_key_value_heads=2, mask_token_id=63, pad_token_id=0)
        >>> config.model_type, config.hidden_size // config.num_attention_heads
        ('Dream', 8)
        ```
    """

    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 32,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = False,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        use_sliding_window: bool = False,
        sliding_window: int = 4096,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        mask_token_id: int = 151666,
        pad_token_id: int = 151643,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        if rope_scaling is not None:
            # Only set when given: transformers 5 turns the attribute into `rope_parameters` with a warning.
            self.rope_scaling = rope_scaling
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window if use_sliding_window else None
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict:
        output = super().to_dict()
        # A checkpoint saved by the native class holds no repository code: an `auto_map` read from the published
        # config.json would point at modeling files the saved folder lacks.
        output.pop("auto_map", None)
        output.setdefault("rope_scaling", None)  # written back as published (`__init__` only sets it when given)
        return output
