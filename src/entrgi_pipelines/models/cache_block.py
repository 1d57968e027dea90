"""An exact key/value cache for block-diffusion models whose rows advance independently.

Block-diffusion models (SDAR, TraDo, Fast-dLLM v2) attend fully inside a block and causally across blocks, so the
keys and values of a committed block never change: they are computed once and reused by every later step. The
cache holds them by absolute position (slot `j` is the token at position `j`), one row per sequence, and each row
has its own committed length, so rows of a batch may be at different blocks.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache


class BlockKVCache(Cache):
    r"""
    Keys and values of committed tokens, by absolute position, with a committed length per row.

    The native block-diffusion models ([`SDARForCausalLM`], [`Fast_dLLM_QwenForCausalLM`]) read and write it; their
    attention modules (transformers' own Qwen3 / Qwen2 attention) call [`~BlockKVCache.update`] once per layer. A
    forward pass with the cache works as follows, for every row `r` independently:

    - **reading**: the input's queries see the cached slot `j` when it has been written and `j` is before the input's
      first position (`position_ids[r, 0]`, or the first valid one under an attention mask). The input's own tokens
      supersede the slots at or after that position, so a model with shifted logits may re-run its last committed
      token as the first input token. The input's tokens see each other by the block-causal rule.
    - **committing** (`store_kv=True`): the input's keys and values are also written at the slots
      `position_ids[r, :]` (only where the attention mask marks the input valid), and the row's length becomes
      `max(length, last valid position + 1)`. A forward pass with `store_kv=False` leaves the cache as it was.

    Storage is allocated at the first forward pass (the batch size, dtype and device come from it). With `max_length`
    the slots are allocated once and no forward pass waits for the device; without it, a committing forward pass
    grows the storage to its largest position (one device-to-host read per commit, none when reading). The stored
    tensors are detached: gradients flow through the input's keys and values, never into the cache.

    Args:
        max_length (`int`, *optional*): the number of position slots to allocate up front (every position written
            must be below it). Default: grow as rows commit.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.models import BlockKVCache, SDARConfig, SDARForCausalLM

        >>> config = SDARConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, block_size=4)
        >>> model = SDARForCausalLM(config).eval()
        >>> prompt = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 8, 9, 10, 11, 12]])
        >>> cache = BlockKVCache()
        >>> with torch.no_grad():  # prefill: row 0 commits 8 tokens, row 1 only 4 (its mask hides the rest)
        ...     _ = model(prompt, position_ids=torch.arange(8).expand(2, 8), past_key_values=cache, use_cache=True,
        ...               attention_mask=torch.tensor([[1] * 8, [1] * 4 + [0] * 4]), store_kv=True)
        >>> cache.lengths
        tensor([8, 4])
        >>> block = torch.full((2, 4), 63)
        >>> positions = cache.lengths[:, None] + torch.arange(4)  # each row's own next block
        >>> with torch.no_grad():
        ...     logits = model(block, position_ids=positions, past_key_values=cache, use_cache=True).logits
        >>> logits.shape, cache.lengths  # reading leaves the cache as it was
        (torch.Size([2, 4, 64]), tensor([8, 4]))
        >>> cache.select_rows(torch.tensor([1])).lengths
        tensor([4])
        ```
    """

    is_compileable = False

    def __init__(self, max_length: int | None = None):
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"`max_length` must be a positive int or None, got {max_length!r}.")
        super().__init__(layers=[])
        self.max_length = max_length
        self.key_cache: list[torch.Tensor] = []
        self.value_cache: list[torch.Tensor] = []
        # (N, slots + 1) bool: which slots hold a committed token. The last column is a scratch slot that absorbs
        # the writes of invalid (padded) input tokens, so that a scatter never has two writers for one real slot.
        self.written: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None
        self._slots = 0
        self._plan: tuple[torch.Tensor, torch.Tensor] | None = None  # (write index, valid) of a committing pass

    # ------------------------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------------------------

    @property
    def lengths(self) -> torch.Tensor | None:
        """`(N,)` LongTensor: per row, one past the last committed position (None before the first forward)."""
        return self._lengths

    @property
    def num_slots(self) -> int:
        """Position slots allocated (`max_length`, or the largest committed position + 1 when growing)."""
        return self._slots

    def __len__(self) -> int:
        return len(self.key_cache)

    def __repr__(self) -> str:
        rows = None if self._lengths is None else len(self._lengths)
        return f"BlockKVCache(rows={rows}, slots={self._slots}, layers={len(self.key_cache)})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of allocated position slots (per-row lengths are in [`~BlockKVCache.lengths`])."""
        return self._slots

    def get_max_cache_shape(self, layer_idx: int = 0) -> int | None:
        return self.max_length

    def select_rows(self, index: torch.LongTensor) -> BlockKVCache:
        """Keeps only the rows `index` (in that order), e.g. to drop finished rows; one copy of the storage.

        `index` is a LongTensor of row numbers (a boolean row mask is accepted too, at the cost of one host sync).
        Returns the cache itself, so that `cache = cache.select_rows(keep)` and `cache.select_rows(keep)` both work.
        """
        if self._lengths is None:
            return self
        index = torch.as_tensor(index, device=self._lengths.device)
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(1)
        self.key_cache = [k.index_select(0, index) for k in self.key_cache]
        self.value_cache = [v.index_select(0, index) for v in self.value_cache]
        self.written = self.written.index_select(0, index)
        self._lengths = self._lengths.index_select(0, index)
        return self

    # transformers' name for the same operation (beam search reorders caches with it)
    batch_select_indices = select_rows

    def reset(self) -> None:
        """Forgets every row and every stored key and value."""
        self.__init__(self.max_length)

    # ------------------------------------------------------------------------------------------------------------
    # The model's side: called by the native block-diffusion models around their layers
    # ------------------------------------------------------------------------------------------------------------

    def begin(self, position_ids: torch.LongTensor, valid: torch.Tensor, store: bool) -> torch.Tensor:
        """Prepares one forward pass; returns the `(N, 1, 1, slots + 1)` boolean visibility of the cached slots.

        Args:
            position_ids: `(N, S)` absolute positions of the input's tokens.
            valid: `(N, S)` boolean, the input tokens that are real (padding is neither seen nor written).
            store: whether this pass commits the input's keys and values.
        """
        batch, device = position_ids.shape[0], position_ids.device
        if self._lengths is None:
            self._slots = self.max_length or 0
            self._lengths = torch.zeros(batch, dtype=torch.long, device=device)
            self.written = torch.zeros(batch, self._slots + 1, dtype=torch.bool, device=device)
        elif len(self._lengths) != batch:
            raise ValueError(
                f"The cache holds {len(self._lengths)} rows but the input has {batch}: keep the rows in step with "
                "`cache.select_rows(index)`, or start a new `BlockKVCache()`."
            )
        if store and self.max_length is None:
            # The one host read of a committing pass: how many slots its positions need.
            needed = int(torch.where(valid, position_ids, -1).max()) + 1
            if needed > self._slots:
                self._grow(needed)
        elif store:
            beyond = (valid & (position_ids >= self.max_length)).any()
            if position_ids.device.type == "cpu" and bool(beyond):
                raise ValueError(
                    f"A position to commit is at or beyond the cache's `max_length` ({self.max_length}): allocate "
                    "`BlockKVCache(max_length=...)` for the longest sequence, or leave it unset to grow."
                )
            if position_ids.device.type != "cpu":
                torch._assert_async(~beyond)  # checked on the device, without waiting for it
        # Slots before the first valid input position; the input supersedes the rest.
        first = torch.where(valid, position_ids, torch.iinfo(torch.long).max).amin(dim=1)
        visible = self.written & (torch.arange(self._slots + 1, device=device) < first[:, None])
        if store:
            scratch = torch.full_like(position_ids, self._slots)
            self._plan = (torch.where(valid, position_ids, scratch), valid)
        else:
            self._plan = None
        return visible[:, None, None, :]

    def finish(self) -> None:
        """Ends the forward pass begun by [`~BlockKVCache.begin`]: marks the committed slots and lengths."""
        if self._plan is None:
            return
        index, valid = self._plan
        self.written.scatter_(1, index, valid)
        self.written[:, -1] = False
        last = torch.where(valid, index, -1).amax(dim=1) + 1
        self._lengths = torch.maximum(self._lengths, last)
        self._plan = None

    def _grow(self, slots: int) -> None:
        def grown(t: torch.Tensor) -> torch.Tensor:
            new = t.new_zeros(*t.shape[:2], slots + 1, *t.shape[3:])
            new[:, :, : self._slots] = t[:, :, : self._slots]
            return new

        self.key_cache = [grown(k) for k in self.key_cache]
        self.value_cache = [grown(v) for v in self.value_cache]
        written = self.written.new_zeros(self.written.shape[0], slots + 1)
        written[:, : self._slots] = self.written[:, : self._slots]
        self.written = written
        self._slots = slots

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by an attention layer with the input's `(N, H_kv, S, D)` keys and values; returns the keys and
        values to attend to (the `slots + 1` cached ones, then the input's) and, when committing, stores the input's.
        """
        if self._lengths is None:
            raise RuntimeError("BlockKVCache.update() called outside a forward pass of a block-diffusion model.")
        if len(self.key_cache) <= layer_idx:
            if len(self.key_cache) != layer_idx:
                raise RuntimeError(f"Layers must fill the cache in order; got layer {layer_idx} first.")
            shape = (key_states.shape[0], key_states.shape[1], self._slots + 1, key_states.shape[3])
            self.key_cache.append(key_states.new_zeros(shape))
            self.value_cache.append(value_states.new_zeros(shape[:3] + (value_states.shape[3],)))
        cached_keys, cached_values = self.key_cache[layer_idx], self.value_cache[layer_idx]
        keys = torch.cat([cached_keys.to(key_states.dtype), key_states], dim=2)
        values = torch.cat([cached_values.to(value_states.dtype), value_states], dim=2)
        if self._plan is not None:
            index = self._plan[0][:, None, :, None]
            cached_keys.scatter_(2, index.expand_as(key_states), key_states.detach().to(cached_keys.dtype))
            cached_values.scatter_(2, index.expand_as(value_states), value_states.detach().to(cached_values.dtype))
        return keys, values
