"""A causal language model as a differentiable reward: the likelihood of scored tokens after the response."""

from __future__ import annotations

import torch
from torch import nn

from .prefix_cache import cache_argument
from .rewards import RewardAdapter
from .templates import RewardTemplate


class CausalLMReward(RewardAdapter):
    """
    The mean log-probability that a causal LM gives the scored tokens of a [`RewardTemplate`], as a reward.

    The template places the response inside a conversation and names the slot whose tokens are scored after it, e.g.
    `[user: "...Text: {response}", assistant: "This text is about {target}"]` with `score="target"`: the reward of a
    response is the mean over the target description's tokens of `log p(token | everything before it)`. It is
    differentiable with respect to `inputs_embeds` (soft, hard or mixed response embeddings). Inputs are left-padded
    with position ids that skip the padding; only the logits of the last `logits_to_keep` positions are computed.

    Args:
        model: an HF `*ForCausalLM` (any model returning `.logits` that takes `inputs_embeds` and `logits_to_keep`).
        reward_template ([`RewardTemplate`]): the conversation, with a `score` slot; [`RewardTerm`] uses it unless
            guidance is given another template.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.guidance import CausalLMReward, RewardTemplate
        >>> from entrgi_pipelines.testing import tiny_causal_lm

        >>> template = RewardTemplate(text="Text: {response}\\nTopic: {target}", score="target")
        >>> reward = CausalLMReward(tiny_causal_lm(50), template)
        >>> embeds = reward.get_input_embeddings()(torch.tensor([[3, 4, 5, 6]]))
        >>> labels = torch.tensor([[-100, -100, 5, 6]])  # score the last two tokens
        >>> reward(embeds, torch.ones(1, 4, dtype=torch.long), labels=labels).shape
        torch.Size([1])
        ```
    """

    padding_side = "left"

    def __init__(self, model: nn.Module, reward_template: RewardTemplate):
        super().__init__()
        if not isinstance(reward_template, RewardTemplate) or reward_template.score is None:
            raise ValueError(
                "`reward_template` must be a RewardTemplate with a scored slot, e.g. "
                "RewardTemplate(messages=[...], score='target'): the reward is the likelihood of those tokens."
            )
        self.model = model
        self.reward_template = reward_template
        self.cache_argument = cache_argument(model)
        self.accepts = {"position_ids", "labels", "logits_to_keep"}
        if self.cache_argument is not None:
            self.accepts.add("past_key_values")

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | None = None,
        past_key_values=None,
    ) -> torch.Tensor:
        """
        Args:
            inputs_embeds (`torch.Tensor` of shape `(N, S, D)`): the input (after the cached prefix, if any).
            attention_mask (`torch.LongTensor` of shape `(N, P + S)`): 1 on real tokens, over the cache and the input.
            labels (`torch.LongTensor` of shape `(N, S)`): the id of each scored token at its position, -100 elsewhere.
            position_ids (`torch.LongTensor` of shape `(N, S)`, *optional*): positions that skip the padding.
            logits_to_keep (`int`, *optional*): compute the logits of the last positions only (all scored tokens
                must lie in the last `logits_to_keep - 1`); all positions by default.
            past_key_values (*optional*): a key/value cache of the prefix.

        Returns:
            `torch.Tensor` of shape `(N,)`: the mean log-probability of each row's scored tokens (0 for a row without).
        """
        if labels is None:
            raise ValueError("`labels` are required: the ids of the tokens to score at their positions, -100 elsewhere")
        keep = labels.shape[1] if logits_to_keep is None else int(logits_to_keep)
        cache = {"use_cache": False} if past_key_values is None else {self.cache_argument: past_key_values}
        logits = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=keep,
            **cache,
        ).logits
        # The logits at position i predict the token at i + 1.
        log_probs = logits[:, :-1].float().log_softmax(-1)
        targets = labels[:, labels.shape[1] - keep + 1 :]
        scored = targets != -100
        token_log_probs = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        return (token_log_probs * scored).sum(-1) / scored.sum(-1).clamp(min=1)
