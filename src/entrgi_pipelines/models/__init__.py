"""Native Dream and LLaDA model classes, registered with transformers' Auto classes when this package is imported.

`AutoModel.from_pretrained(<a Dream or LLaDA checkpoint>)` (and `AutoModelForMaskedLM`) then builds
[`DreamModel`] or [`LLaDAModelLM`] from the checkpoint's own `config.json` and safetensors, without running the
repository's code. To run the repository's code instead, pass `trust_remote_code=True` inside
[`use_repository_code`] (transformers 5 prefers a registered class to a repository's code even with
`trust_remote_code=True`; transformers 4 needs only the flag).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .cache_block import BlockKVCache
from .cache_full_attention import FullAttentionKVCache
from .configuration_block_diffusion import Fast_dLLM_QwenConfig, SDARConfig
from .configuration_dream import DreamConfig
from .configuration_llada import LLaDAConfig
from .modeling_block_diffusion import Fast_dLLM_QwenForCausalLM, Fast_dLLM_QwenModel, SDARForCausalLM, SDARModel
from .modeling_dream import DreamModel
from .modeling_llada import LLaDAModelLM

NATIVE_CLASSES = ((DreamConfig, DreamModel), (LLaDAConfig, LLaDAModelLM))
_AUTO_MODEL_CLASSES = (AutoModel, AutoModelForMaskedLM)
# Block-diffusion LMs: AutoModel gives the LM (with its logits) too, as for Dream and LLaDA.
BLOCK_DIFFUSION_CLASSES = ((SDARConfig, SDARForCausalLM), (Fast_dLLM_QwenConfig, Fast_dLLM_QwenForCausalLM))
_BLOCK_AUTO_MODEL_CLASSES = (AutoModel, AutoModelForCausalLM)


def register() -> None:
    """Registers the native classes for the model types `"Dream"` and `"llada"` (done when the package is imported)."""
    for config_class, model_class in NATIVE_CLASSES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class in _AUTO_MODEL_CLASSES:
            auto_class.register(config_class, model_class, exist_ok=True)
    for config_class, model_class in BLOCK_DIFFUSION_CLASSES:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_class in _BLOCK_AUTO_MODEL_CLASSES:
            auto_class.register(config_class, model_class, exist_ok=True)


@contextlib.contextmanager
def use_repository_code() -> Iterator[None]:
    """Lifts the native registration for the duration of a `with` block, so that `trust_remote_code=True` loads
    the repository's own Dream or LLaDA classes (`auto_map` in its `config.json`) on every transformers version.

    Examples:
        ```py
        >>> from transformers import AutoModel
        >>> from entrgi_pipelines.models import use_repository_code

        >>> with use_repository_code():  # doctest: +SKIP
        ...     dllm = AutoModel.from_pretrained("Dream-org/Dream-v0-Instruct-7B", trust_remote_code=True)
        ```
    """
    # transformers keeps registered classes in these two dicts (the same private names in 4.x and 5.x; the tests
    # check both versions).
    for config_class, _ in NATIVE_CLASSES:
        CONFIG_MAPPING._extra_content.pop(config_class.model_type, None)
        for auto_class in _AUTO_MODEL_CLASSES:
            auto_class._model_mapping._extra_content.pop(config_class, None)
    for config_class, _ in BLOCK_DIFFUSION_CLASSES:
        CONFIG_MAPPING._extra_content.pop(config_class.model_type, None)
        for auto_class in _BLOCK_AUTO_MODEL_CLASSES:
            auto_class._model_mapping._extra_content.pop(config_class, None)
    try:
        yield
    finally:
        register()


register()

__all__ = [
    "BlockKVCache",
    "DreamConfig",
    "DreamModel",
    "Fast_dLLM_QwenConfig",
    "Fast_dLLM_QwenForCausalLM",
    "Fast_dLLM_QwenModel",
    "FullAttentionKVCache",
    "LLaDAConfig",
    "LLaDAModelLM",
    "SDARConfig",
    "SDARForCausalLM",
    "SDARModel",
    "register",
    "use_repository_code",
]
