"""Configuration of LLaDA, read from a LLaDA checkpoint's own `config.json` (model type `"llada"`, OLMo field names)."""

from __future__ import annotations

from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    r"""
    Configuration of [`LLaDAModelLM`]: LLaDA's OLMo-style fields, with the defaults of the published `LLaDAConfig`.

    The published class fills every field it does not get from OLMo's `ModelConfig` defaults (GPT-2-like: 12 layers,
    width 768, a "sequential" block, no RoPE), so those are the defaults here too: a `config.json` means the same to
    both. LLaDA-8B's `config.json` sets the architecture explicitly: `block_type` "llama", `d_model` 4096, `n_layers`
    32, `n_heads` = `n_kv_heads` = 32, `mlp_hidden_size` 12288, `activation_type` "silu", `layer_norm_type` "rms",
    `rope` true with `rope_theta` 500000, `vocab_size` = `embedding_size` = 126464, `weight_tying` false and
    `mask_token_id` 126336. Fields that only the training code reads (`init_*`, `precision`, `flash_attention`, ...)
    are kept as given, so a saved config still loads with the repository's own code.

    [`LLaDAModelLM`] implements the "llama" block with RMS norms, RoPE and SiLU-gated MLP (LLaDA-8B's); it refuses
    other architectures with an error naming the field. The transformers names `hidden_size`,
    `num_attention_heads`, `num_hidden_layers` and `max_position_embeddings` read `d_model`, `n_heads`, `n_layers`
    and `max_sequence_length`.

    Args:
        d_model (`int`, defaults to 768): model width.
        n_heads (`int`, defaults to 12): query heads.
        n_kv_heads (`int`, *optional*): key/value heads; `None` means `n_heads` (or 1 with `multi_query_attention`).
        n_layers (`int`, defaults to 12): transformer blocks.
        mlp_ratio (`int`, defaults to 4): MLP width as a multiple of `d_model`, when `mlp_hidden_size` is unset.
        mlp_hidden_size (`int`, *optional*): MLP width.
        activation_type (`str`, defaults to `"swiglu"`): MLP activation; the llama block needs `"silu"`.
        block_type (`str`, defaults to `"sequential"`): block layout; the native class implements `"llama"`.
        block_group_size (`int`, defaults to 1): blocks per FSDP group (1: the checkpoint names are `blocks.{i}`).
        alibi (`bool`, defaults to `False`): ALiBi instead of RoPE (not supported).
        rope (`bool`, defaults to `False`): rotary position embeddings (required).
        rope_full_precision (`bool`, defaults to `True`): rotate queries and keys in float32.
        rope_theta (`float`, defaults to 10000.0): RoPE base. A `rope_parameters` dict (as transformers 5 writes
            RoPE settings) of `rope_type` "default" may give it instead; RoPE scaling is not supported.
        attention_dropout (`float`, defaults to 0.1): dropout on the attention weights in training mode.
        multi_query_attention (`bool`, *optional*): one key/value head.
        attention_layer_norm (`bool`, defaults to `False`): norms on queries and keys (not supported).
        residual_dropout (`float`, defaults to 0.1): dropout on each block's two branches in training mode.
        embedding_dropout (`float`, defaults to 0.1): dropout on the input embeddings in training mode.
        input_emb_norm (`bool`, defaults to `False`): scale the input embeddings by `sqrt(d_model)`.
        layer_norm_type (`str`, defaults to `"default"`): norm kind; the native class implements `"rms"`.
        layer_norm_with_affine (`bool`, defaults to `True`): norms have a learnt scale (required).
        rms_norm_eps (`float`, defaults to 1e-5): epsilon of the RMS norms.
        max_sequence_length (`int`, defaults to 1024): the longest sequence the pipeline will build.
        include_qkv_bias (`bool`, defaults to `False`): bias on the query/key/value projections.
        include_bias (`bool`, defaults to `False`): bias on every linear layer.
        bias_for_layer_norm (`bool`, *optional*): bias on the norms; `None` means `include_bias`.
        scale_logits (`bool`, defaults to `False`): divide the logits by `sqrt(d_model)`.
        vocab_size (`int`, defaults to 50257): the tokenizer's vocabulary.
        embedding_size (`int`, *optional*, defaults to 50304): rows of the embedding and of the output (the width of
            the logits); `None` means `vocab_size`.
        weight_tying (`bool`, defaults to `True`): use the token embedding as the output projection.
        mask_token_id (`int`, defaults to 50256): the mask token (126336 in LLaDA-8B).
        eos_token_id (`int`, defaults to 50256): end of sequence.
        pad_token_id (`int`, defaults to 50256): padding.
        use_cache (`bool`, defaults to `False`): kept for the published code; the native model has no cache.

    Examples:
        ```py
        >>> from entrgi_pipelines.models import LLaDAConfig

        >>> config = LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, block_type="llama",
        ...                      activation_type="silu", layer_norm_type="rms", rope=True, vocab_size=64,
        ...                      embedding_size=64, weight_tying=False, mask_token_id=63)
        >>> config.model_type, config.hidden_size, config.num_hidden_layers
        ('llada', 32, 2)
        ```
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_sequence_length",
    }

    def __init__(
        self,
        d_model: int = 768,
        n_heads: int = 12,
        n_kv_heads: int | None = None,
        n_layers: int = 12,
        mlp_ratio: int = 4,
        mlp_hidden_size: int | None = None,
        activation_type: str = "swiglu",
        block_type: str = "sequential",
        block_group_size: int = 1,
        alibi: bool = False,
        rope: bool = False,
        rope_full_precision: bool = True,
        rope_theta: float = 10000.0,
        attention_dropout: float = 0.1,
        multi_query_attention: bool | None = None,
        attention_layer_norm: bool = False,
        residual_dropout: float = 0.1,
        embedding_dropout: float = 0.1,
        input_emb_norm: bool = False,
        layer_norm_type: str = "default",
        layer_norm_with_affine: bool = True,
        rms_norm_eps: float = 1e-5,
        max_sequence_length: int = 1024,
        include_qkv_bias: bool = False,
        include_bias: bool = False,
        bias_for_layer_norm: bool | None = None,
        scale_logits: bool = False,
        vocab_size: int = 50257,
        embedding_size: int | None = 50304,
        weight_tying: bool = True,
        mask_token_id: int = 50256,
        eos_token_id: int = 50256,
        pad_token_id: int = 50256,
        use_cache: bool = False,
        **kwargs,
    ):
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size
        self.activation_type = activation_type
        self.block_type = block_type
        self.block_group_size = block_group_size
        self.alibi = alibi
        self.rope = rope
        self.rope_full_precision = rope_full_precision
        self.rope_theta = rope_theta
        self.attention_dropout = attention_dropout
        self.multi_query_attention = multi_query_attention
        self.attention_layer_norm = attention_layer_norm
        self.residual_dropout = residual_dropout
        self.embedding_dropout = embedding_dropout
        self.input_emb_norm = input_emb_norm
        self.layer_norm_type = layer_norm_type
        self.layer_norm_with_affine = layer_norm_with_affine
        self.rms_norm_eps = rms_norm_eps
        self.max_sequence_length = max_sequence_length
        self.include_qkv_bias = include_qkv_bias
        self.include_bias = include_bias
        self.bias_for_layer_norm = bias_for_layer_norm
        self.scale_logits = scale_logits
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.weight_tying = weight_tying
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        # transformers ties the output to the input embedding by its own flag (True by default): LLaDA's is
        # `weight_tying`, and a config saved here writes both, the latter winning.
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, tie_word_embeddings=weight_tying, **kwargs
        )

    def to_dict(self) -> dict:
        output = super().to_dict()
        # A checkpoint saved by the native class holds no repository code: an `auto_map` read from the published
        # config.json would point at modeling files the saved folder lacks.
        output.pop("auto_map", None)
        return output

    @property
    def effective_n_kv_heads(self) -> int:
        """Key/value heads: `n_kv_heads`, else 1 with `multi_query_attention`, else `n_heads` (as OLMo reads them)."""
        if self.n_kv_heads is not None:
            if self.multi_query_attention is not None and self.n_kv_heads != (
                1 if self.multi_query_attention else self.n_heads
            ):
                raise ValueError("`multi_query_attention` and `n_kv_heads` disagree: set only one of them.")
            return self.n_kv_heads
        return 1 if self.multi_query_attention else self.n_heads

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: `mlp_hidden_size`, else `mlp_ratio * d_model`."""
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model
