"""Reward-guided generation with masked discrete diffusion language models (EntRGi), the diffusers way."""

from .guidance import RewardGuidance, VocabularyMap, entrgi_embeddings, entropy_weight
from .models import (  # noqa: F401  (registers them: AutoModel)
    BlockKVCache,
    DreamConfig,
    DreamModel,
    Fast_dLLM_QwenConfig,
    Fast_dLLM_QwenForCausalLM,
    FullAttentionKVCache,
    LLaDAConfig,
    LLaDAModelLM,
    SDARConfig,
    SDARForCausalLM,
)
from .pipelines import EntRGiPipeline, EntRGiPipelineOutput
from .schedulers import MaskedDiffusionScheduler, MaskedDiffusionSchedulerOutput
from .stack import reward_models as _reward_models  # noqa: F401  (registers the reward models' Auto classes)

__version__ = "0.1.0"

__all__ = [
    "EntRGiPipeline",
    "EntRGiPipelineOutput",
    "MaskedDiffusionScheduler",
    "MaskedDiffusionSchedulerOutput",
    "RewardGuidance",
    "VocabularyMap",
    "entrgi_embeddings",
    "entropy_weight",
]
