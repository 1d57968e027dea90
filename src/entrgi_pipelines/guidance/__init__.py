from .entrgi import entrgi_embeddings, entropy_weight, optimize_logits
from .reward_guidance import RewardGuidance
from .rewards import CallableReward, RewardTerm, SequenceClassifierReward, as_differentiable_reward
from .vocab import VocabularyMap

__all__ = [
    "CallableReward",
    "RewardGuidance",
    "RewardTerm",
    "SequenceClassifierReward",
    "VocabularyMap",
    "as_differentiable_reward",
    "entrgi_embeddings",
    "entropy_weight",
    "optimize_logits",
]
