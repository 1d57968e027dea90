"""all-MiniLM-L6-v2 sentence embeddings of a (target, response) pair: the reward models of the embedded stack.

This file is self-contained (it imports only torch and transformers): `entrgi_pipelines` imports it, and
`entrgi export` copies it into the reward and judge Hub repos, whose ``config.json`` names it in ``auto_map`` so
that ``AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)`` works without this package.

Both models read a pair the way a BERT tokenizer encodes it, ``tokenizer(target, response)``::

    [CLS] target [SEP] response [SEP]
    token_type_ids:  0 ... 0 (segment A)   1 ... 1 (segment B)

and embed each segment *on its own*, as sentence-transformers would embed ``target`` and ``response`` as two
separate sentences: one BERT pass with a block-diagonal attention mask (a token only sees tokens of its own
segment), position ids that restart per segment and token type 0 everywhere (MiniLM was trained on single
sentences). Segment B has no ``[CLS]`` of its own in the pair, so a virtual ``[CLS]`` (position 0, segment B)
is appended to the sequence: attention has no notion of order beyond the position ids, so the response is then
encoded exactly as ``[CLS] response [SEP]``. A segment's embedding is the mean of its last hidden states,
L2-normalised (all-MiniLM-L6-v2's own pooling).

- ``reward_type="similarity"``: the logit is the cosine similarity of the two embeddings.
- ``reward_type="topic"`` (the held-out judge): a linear topic head on the embeddings; the logit is the
  probability that the response is on the target's (argmax) topic.

The forward pass accepts ``inputs_embeds`` instead of ``input_ids`` and is differentiable with respect to them,
for gradient-based guidance with soft token embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

REWARD_TYPES = ("similarity", "topic")


class MiniLMPairConfig(BertConfig):
    """Config of :class:`MiniLMPairRewardModel`: a ``BertConfig`` plus the reward type and the judge's topics.

    Args:
        reward_type: ``"similarity"`` (cosine of the two segment embeddings) or ``"topic"`` (topic judge).
        topics: Names of the topic head's classes (``reward_type="topic"`` only).
        cls_token_id: Id of ``[CLS]``, whose embedding opens segment B (the response) like it opens segment A.
    """

    model_type = "entrgi_minilm_pair"

    reward_type: str = "similarity"
    topics: list[str] | None = None
    cls_token_id: int = 101

    def __post_init__(self, **kwargs):
        # One logit per pair; a saved config carries its own id2label, which takes precedence.
        kwargs.setdefault("num_labels", 1)
        super().__post_init__(**kwargs)
        if self.reward_type not in REWARD_TYPES:
            raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {self.reward_type!r}")
        if self.reward_type == "topic" and not self.topics:
            raise ValueError('reward_type="topic" needs the list of `topics`')


class MiniLMPairRewardModel(BertPreTrainedModel):
    """Scores a (target, response) pair with MiniLM sentence embeddings; see the module docstring."""

    config_class = MiniLMPairConfig

    def __init__(self, config: MiniLMPairConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        if config.reward_type == "topic":
            self.topic_head = nn.Linear(config.hidden_size, len(config.topics))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.bert.embeddings.word_embeddings = value

    def embed_segments(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised mean-pooled embeddings ``(N, hidden)`` of segment A (target) and segment B (response)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if token_type_ids is None:
            raise ValueError("`token_type_ids` are required: 0 marks the target (segment A), 1 the response (B).")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        n, length, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if attention_mask is None:
            attention_mask = torch.ones(n, length, dtype=torch.long, device=device)
        valid = attention_mask.bool()
        in_a = valid & (token_type_ids == 0)
        in_b = valid & (token_type_ids == 1)
        for name, member in (("A (target)", in_a), ("B (response)", in_b)):
            empty = (~member.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"Rows {empty} have no token in segment {name}; expected `tokenizer(target, response)`."
                )

        # Positions restart per segment: A counts from 0 (its [CLS]), B from 1 (after its virtual [CLS]).
        position_ids = torch.where(in_a, in_a.cumsum(dim=1) - 1, torch.where(in_b, in_b.cumsum(dim=1), 0))
        # Append segment B's virtual [CLS] as an extra last column (position 0).
        cls = self.get_input_embeddings().weight[self.config.cls_token_id].to(inputs_embeds.dtype)
        inputs_embeds = torch.cat([inputs_embeds, cls.expand(n, 1, -1)], dim=1)
        position_ids = F.pad(position_ids, (0, 1), value=0)
        in_a = F.pad(in_a, (0, 1), value=False)
        in_b = F.pad(in_b, (0, 1), value=True)

        # Block-diagonal additive mask: a token sees only its own segment. Padding tokens see only themselves,
        # so that no softmax row is empty; nothing attends to them and they are not pooled.
        segment = in_a.long() + 2 * in_b.long()
        allowed = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] > 0)
        allowed |= torch.eye(length + 1, dtype=torch.bool, device=device)
        mask = torch.zeros(allowed.shape, dtype=inputs_embeds.dtype, device=device)
        mask = mask.masked_fill(~allowed, torch.finfo(inputs_embeds.dtype).min)[:, None]

        hidden = self.bert(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            token_type_ids=torch.zeros_like(position_ids),
            position_ids=position_ids,
        ).last_hidden_state
        return _mean_pool(hidden, in_a), _mean_pool(hidden, in_b)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple[torch.Tensor]:
        """Reward logits ``(N, 1)``: cosine similarity, or the probability that the response is on the target's topic.

        Args:
            input_ids: ``(N, L)`` ids of ``[CLS] target [SEP] response [SEP]`` (any padding side).
            attention_mask: ``(N, L)``, 1 for real tokens.
            token_type_ids: ``(N, L)``, 0 for the target's tokens, 1 for the response's.
            inputs_embeds: ``(N, L, hidden)`` word embeddings instead of ``input_ids`` (e.g. soft ones).
            return_dict: Return a tuple ``(logits,)`` when ``False``.
            kwargs: Ignored (pipelines may pass generic flags).
        """
        emb_a, emb_b = self.embed_segments(input_ids, attention_mask, token_type_ids, inputs_embeds)
        if self.config.reward_type == "similarity":
            logits = (emb_a * emb_b).sum(dim=-1, keepdim=True)
        else:
            target_topic = self.topic_head(emb_a).detach().argmax(dim=-1, keepdim=True)
            logits = self.topic_head(emb_b).softmax(dim=-1).gather(-1, target_topic)
        if return_dict is False:
            return (logits,)
        return SequenceClassifierOutput(logits=logits)


def _mean_pool(hidden: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    weights = member.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * weights).sum(dim=1) / weights.sum(dim=1), dim=-1)
