"""Fast-dLLM's approximate key/value cache for full-attention diffusion LMs (Dream, LLaDA).

A full-attention dLLM's keys and values change whenever any token of the sequence changes, so no cache of them is
exact. Fast-dLLM (Wu et al. 2025) reuses them anyway within a block of semi-autoregressive decoding: one forward
over the whole sequence at the block's first step computes every layer's keys and values, and the block's later
steps run only the tokens that are changing, attending to those cached keys and values for everything else. The
cache is refreshed at every block's first step. [`FullAttentionKVCache`] is that store; the pipeline decides what
each step runs (`kv_cache="prefix"`: the block and everything after it; `"dual"`: the block only).
"""

from __future__ import annotations

import torch


class FullAttentionKVCache:
    r"""
    Every layer's keys and values of a whole sequence, filled by a full forward and read by sliced forwards.

    The native [`DreamModel`] and [`LLaDAModelLM`] take it as `past_key_values`:

    - **filling**: `model(input_ids, past_key_values=cache)` runs the whole sequence as without a cache (the same
      logits) and stores every layer's keys (after the rotary embedding: positions stay absolute) and values,
      `(N, H_kv, S, D)`, replacing what the cache held.
    - **reading**: `model(input_ids[:, columns], past_key_values=cache, cache_position=columns)` runs only the
      input's tokens, which sit at the sequence's columns `cache_position` (a 1D LongTensor, the same for every
      row). Their queries attend to all `S` columns: the input's own fresh keys and values at `cache_position`, the
      cached ones everywhere else. `attention_mask` then covers the `S` keys: `(N, S)`, or `(N, 1, S_in, S)` (the
      input's rows of a pairwise mask); `position_ids` default to `cache_position`. Reading leaves the cache as it
      was. When nothing outside `cache_position` changed since the cache was filled, the input's logits equal the
      full forward's at those columns (to float rounding).

    The stored tensors are detached: gradients flow through the input's keys and values, never into the cache. No
    step waits for the device.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.models import DreamConfig, DreamModel, FullAttentionKVCache

        >>> config = DreamConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                      num_attention_heads=4, num_key_value_heads=2, mask_token_id=63, pad_token_id=0)
        >>> model = DreamModel(config).eval()
        >>> x = torch.tensor([[5, 6, 7, 63, 63, 63, 63, 63]])
        >>> cache = FullAttentionKVCache()
        >>> with torch.no_grad():
        ...     full = model(x, past_key_values=cache).logits  # fills the cache
        ...     block = torch.arange(3, 6)  # the columns of the current block
        ...     part = model(x[:, block], past_key_values=cache, cache_position=block).logits
        >>> cache.seq_length, len(cache), part.shape
        (8, 2, torch.Size([1, 3, 64]))
        >>> torch.allclose(part, full[:, 3:6], atol=1e-5)  # nothing changed: the full forward's logits
        True
        ```
    """

    def __init__(self):
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        self._columns: torch.LongTensor | None = None  # the running forward's input columns; None while filling
        self._filling = False

    @property
    def seq_length(self) -> int | None:
        """`S`, the length of the cached sequence (None before the first filling forward)."""
        return self.key_cache[0].shape[2] if self.key_cache else None

    def __len__(self) -> int:
        return len(self.key_cache)

    def __repr__(self) -> str:
        rows = self.key_cache[0].shape[0] if self.key_cache else None
        return f"FullAttentionKVCache(rows={rows}, seq_length={self.seq_length}, layers={len(self)})"

    def reset(self) -> None:
        """Forgets every stored key and value."""
        self.__init__()

    def reorder(self, index: torch.LongTensor) -> FullAttentionKVCache:
        """Keeps the rows `index` (a LongTensor of row numbers, repeats allowed), e.g. after particles are
        resampled; returns the cache itself."""
        self.key_cache = [k.index_select(0, index.to(k.device)) for k in self.key_cache]
        self.value_cache = [v.index_select(0, index.to(v.device)) for v in self.value_cache]
        return self

    # ------------------------------------------------------------------------------------------------------------
    # The model's side: called by the native full-attention models around their layers
    # ------------------------------------------------------------------------------------------------------------

    def begin(self, batch_size: int, seq_len: int, num_layers: int, cache_position: torch.LongTensor | None) -> int:
        """Prepares one forward pass of `seq_len` input tokens; returns the number of keys its queries attend to.

        Without `cache_position` the pass fills the cache (and attends to its own `seq_len` keys); with it the pass
        reads the cache, which must hold `batch_size` rows of all `num_layers` layers.
        """
        if cache_position is None:
            self.key_cache, self.value_cache = [], []
            self._columns, self._filling = None, True
            return seq_len
        if isinstance(cache_position, bool) or not isinstance(cache_position, torch.Tensor):
            raise TypeError(
                f"`cache_position` must be a 1D LongTensor of columns, got {type(cache_position).__name__}."
            )
        if cache_position.dim() != 1 or cache_position.dtype != torch.long or len(cache_position) != seq_len:
            raise ValueError(
                f"`cache_position` must be a 1D LongTensor with one column per input token ({seq_len}), got "
                f"{cache_position.dtype} of shape {tuple(cache_position.shape)}."
            )
        if len(self) != num_layers:
            raise ValueError(
                f"The cache holds {len(self)} layers, the model has {num_layers}: fill it first with a forward over "
                "the whole sequence (`past_key_values=cache` without `cache_position`)."
            )
        if self.key_cache[0].shape[0] != batch_size:
            raise ValueError(
                f"The cache holds {self.key_cache[0].shape[0]} rows but the input has {batch_size}: keep the rows "
                "in step (`cache.reorder(index)`), or fill it again."
            )
        self._columns, self._filling = cache_position, False
        return self.seq_length

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by layer `layer_idx` with the input's `(N, H_kv, S_in, D)` keys and values (rotated); returns the
        keys and values to attend to: the input's own while filling (storing them), else all `S` columns, the cached
        ones with the input's at `cache_position`."""
        if self._filling:
            if layer_idx != len(self.key_cache):
                raise RuntimeError(f"Layers must fill the cache in order; got layer {layer_idx} first.")
            self.key_cache.append(key.detach())
            self.value_cache.append(value.detach())
            return key, value
        if self._columns is None:
            raise RuntimeError("FullAttentionKVCache.update() called outside a forward pass of a native dLLM.")
        cached_key, cached_value = self.key_cache[layer_idx], self.value_cache[layer_idx]
        # Out of place, so the cache stays as it was and gradients reach the input's keys and values.
        keys = cached_key.to(key.dtype).index_copy(2, self._columns, key)
        values = cached_value.to(value.dtype).index_copy(2, self._columns, value)
        return keys, values

    def finish(self) -> None:
        """Ends the forward pass begun by [`~FullAttentionKVCache.begin`]."""
        self._columns, self._filling = None, False
