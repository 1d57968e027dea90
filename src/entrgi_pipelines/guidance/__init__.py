from .entrgi import entrgi_embeddings, entropy_weight, optimize_logits
from .likelihood import CausalLMReward
from .reward_guidance import RewardGuidance
from .rewards import CallableReward, RewardAdapter, RewardTerm, SequenceClassifierReward, as_differentiable_reward
from .templates import RewardTemplate
from .vocab import VocabularyMap

__all__ = [
    "CallableReward",
    "CausalLMReward",
    "RewardAdapter",
    "RewardGuidance",
    "RewardTemplate",
    "RewardTerm",
    "SequenceClassifierReward",
    "VocabularyMap",
    "as_differentiable_reward",
    "entrgi_embeddings",
    "entropy_weight",
    "optimize_logits",
]
