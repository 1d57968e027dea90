"""Differentiable rewards: adapters for reward models, and the layout of their inputs.

A reward sees `prefix | response | suffix` for each sample, where the prefix and suffix wrap the response the way
the reward model was trained (its chat template, or a text pair without one). Guidance feeds the response as
embeddings (soft, hard or mixed); the reported reward feeds the decoded text's tokens. Both go through
:meth:`RewardTerm.reward`, so for the same tokens they see the same sequence, padding, pooling position and
end-of-sequence cut.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .vocab import VocabularyMap

_RESPONSE_SLOT = "\u2063entrgi-response\u2063"


class SequenceClassifierReward(nn.Module):
    """
    Adapts an HF `*ForSequenceClassification` with one label to `(inputs_embeds, attention_mask) -> reward (N,)`.

    Args:
        model: the classifier (`config.num_labels == 1`).
        padding_side (`str`, *optional*): where padding goes. HF classifiers that pool the last token (`score` head:
            Llama, Qwen, Mistral, GPT-2) cannot find it from `inputs_embeds` and pool position -1, so they need
            `"left"`; encoders that pool the first token (`classifier` head: BERT, RoBERTa) need `"right"`. Detected
            from the head's name when not given.
    """

    def __init__(self, model: nn.Module, padding_side: str | None = None):
        super().__init__()
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if num_labels != 1:
            raise ValueError(
                f"`reward_model` must score each sequence with one number (`config.num_labels == 1`), got "
                f"num_labels={num_labels}; wrap it in a callable that returns one reward per row."
            )
        self.model = model
        self.padding_side = padding_side or ("left" if hasattr(model, "score") else "right")
        accepted = inspect.signature(model.forward).parameters
        self.accepts = {name for name in ("token_type_ids", "position_ids") if name in accepted}

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor):
        extra = {k: v for k, v in extra.items() if k in self.accepts}
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra).logits[:, 0]


class CallableReward(nn.Module):
    """Wraps any callable `(inputs_embeds, attention_mask) -> reward (N,)` that has `get_input_embeddings()`."""

    def __init__(self, reward: Callable, padding_side: str = "right"):
        super().__init__()
        self.reward = reward
        self.padding_side = padding_side
        self.accepts: set[str] = set()

    def get_input_embeddings(self) -> nn.Module:
        return self.reward.get_input_embeddings()

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor):
        reward = self.reward(inputs_embeds, attention_mask)
        return getattr(reward, "logits", reward).reshape(inputs_embeds.shape[0], -1)[:, 0]


def as_differentiable_reward(reward_model: Any, padding_side: str | None = None) -> nn.Module:
    """Returns `reward_model` as a module `(inputs_embeds, attention_mask) -> (N,)` with `get_input_embeddings()`."""
    if isinstance(reward_model, (SequenceClassifierReward, CallableReward)):
        return reward_model
    if not callable(getattr(reward_model, "get_input_embeddings", None)):
        raise TypeError(
            f"`reward_model` must expose `get_input_embeddings()` so guidance can feed it embeddings; "
            f"{type(reward_model).__name__} does not. Use an HF *ForSequenceClassification model or add the method."
        )
    if hasattr(getattr(reward_model, "config", None), "num_labels"):
        return SequenceClassifierReward(reward_model, padding_side)
    if not callable(reward_model):
        raise TypeError(f"`reward_model` must be callable as `(inputs_embeds, attention_mask)`, got {reward_model!r}.")
    return CallableReward(reward_model, padding_side or "right")


def wrap_response(tokenizer, prompt: str) -> tuple[list[int], list[int], list[int], list[int]]:
    """Token ids (and token types) that come before and after a response to `prompt` in the reward model's input.

    With a chat template: the conversation `[user: prompt, assistant: response]` rendered and split at the
    response. Without: the tokenizer's text pair `(prompt, response)` (e.g. `[CLS] prompt [SEP] response [SEP]`).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _RESPONSE_SLOT}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        if text.count(_RESPONSE_SLOT) != 1:
            raise ValueError("The reward tokenizer's chat template must render the assistant message exactly once.")
        before, after = text.split(_RESPONSE_SLOT)
        prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
        suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
        return prefix, [0] * len(prefix), suffix, [0] * len(suffix)
    encoding = tokenizer(prompt, "x")
    sequence_ids = encoding.sequence_ids(0)
    start, end = sequence_ids.index(1), len(sequence_ids) - sequence_ids[::-1].index(1)
    ids = encoding["input_ids"]
    types = encoding.get("token_type_ids") or [0] * len(ids)
    return ids[:start], types[:start], ids[end:], types[end:]


def visible_before_eos(tokens: torch.LongTensor, eos_token_id: int | None) -> torch.BoolTensor:
    """Positions before the first end-of-sequence token of each row (the token itself and all after are hidden)."""
    if eos_token_id is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return (tokens == eos_token_id).cumsum(-1) == 0


def pack(keep: torch.BoolTensor, padding_side: str) -> torch.LongTensor:
    """A gather index that moves the kept positions of each row together, in order, to one side (no host sync)."""
    key = keep.int() if padding_side == "left" else (~keep).int()
    return key.argsort(dim=-1, stable=True)


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[torch.LongTensor, torch.BoolTensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        keep[i, : len(row)] = True
    return ids, keep


class RewardTerm:
    """
    One reward model inside guidance: its adapter, tokenizer, weight and vocabulary map, and the per-call
    prefix/suffix of every sample.

    Args:
        reward_model: an HF sequence classifier with one label, or any differentiable reward (see
            [`as_differentiable_reward`]).
        tokenizer: the reward model's tokenizer.
        weight (`float`): the term's weight in the summed reward.
        vocab_map ([`VocabularyMap`], *optional*): diffusion ids -> reward ids (identity when omitted).
        padding_side (`str`, *optional*): overrides the adapter's padding side.
    """

    def __init__(
        self,
        reward_model,
        tokenizer,
        weight: float = 1.0,
        vocab_map: VocabularyMap | None = None,
        padding_side: str | None = None,
    ):
        self.adapter = as_differentiable_reward(reward_model, padding_side)
        self.tokenizer = tokenizer
        self.weight = weight
        self.embeddings = self.adapter.get_input_embeddings()
        self.vocab_map = vocab_map or VocabularyMap.identity(self.embeddings.weight.shape[0])
        self._context: dict[str, torch.Tensor] | None = None
        self._dllm_embeddings: torch.Tensor | None = None

    def dllm_embedding_matrix(self) -> torch.Tensor:
        """The reward model's embedding of every diffusion-vocabulary token, `(V_dllm, D)`, without gradient."""
        weight = self.embeddings.weight
        if self._dllm_embeddings is None or self._dllm_embeddings.device != weight.device:
            self._dllm_embeddings = weight.detach()[self.vocab_map.ids.to(weight.device)]
        return self._dllm_embeddings

    def prepare(self, reward_prompts: Sequence[str], device: torch.device | str) -> None:
        """Builds the prefix and suffix of each of the N samples (`reward_prompts` has one entry per sample)."""
        self._dllm_embeddings = None  # re-read at every call: the reward model's weights may have changed since
        wrapped = {prompt: wrap_response(self.tokenizer, prompt) for prompt in dict.fromkeys(reward_prompts)}
        parts = [wrapped[prompt] for prompt in reward_prompts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prefix, prefix_keep = _pad([p[0] for p in parts], pad)
        prefix_types, _ = _pad([p[1] for p in parts], 0)
        suffix, suffix_keep = _pad([p[2] for p in parts], pad)
        suffix_types, _ = _pad([p[3] for p in parts], 0)
        # The response takes the token type of the suffix's first token (the second segment of a text pair).
        response_type = torch.tensor([p[3][0] if p[3] else (p[1][-1] if p[1] else 0) for p in parts])
        with torch.no_grad():
            self._context = {
                "prefix": self.embeddings(prefix.to(device)).detach(),
                "suffix": self.embeddings(suffix.to(device)).detach(),
                "prefix_keep": prefix_keep.to(device),
                "suffix_keep": suffix_keep.to(device),
                "prefix_types": prefix_types.to(device),
                "suffix_types": suffix_types.to(device),
                "response_type": response_type.to(device),
            }

    def reward(self, response_embeds: torch.Tensor, visible: torch.BoolTensor) -> torch.Tensor:
        """Reward `(N,)` of responses given as embeddings `(N, L, D)`; positions where `visible` is False are unseen."""
        if self._context is None:
            raise RuntimeError("Call `prepare(reward_prompts, device)` before computing rewards.")
        c = self._context
        embeds = torch.cat(
            [c["prefix"].to(response_embeds.dtype), response_embeds, c["suffix"].to(response_embeds.dtype)], dim=1
        )
        keep = torch.cat([c["prefix_keep"], visible, c["suffix_keep"]], dim=1)
        types = torch.cat([c["prefix_types"], c["response_type"][:, None].expand_as(visible), c["suffix_types"]], 1)
        order = pack(keep, self.adapter.padding_side)
        embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
        attention_mask = keep.gather(1, order).long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.adapter(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            token_type_ids=types.gather(1, order),
            position_ids=position_ids,
        ).float()

    def reward_of_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Reward `(N,)` of response texts, tokenised by the reward tokenizer (the discrete reward)."""
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, visible = _pad(ids, pad)
        device = self.embeddings.weight.device
        if ids.shape[1] == 0:  # every response is empty
            ids, visible = ids.new_full((len(texts), 1), pad), visible.new_zeros((len(texts), 1))
        return self.reward(self.embeddings(ids.to(device)), visible.to(device))
