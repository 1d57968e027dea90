"""Hugging Face Hub helpers under their former single name (kept so that existing imports keep working).

The helpers live where they belong in the layers (see docs/architecture.md):

- [`entrgi_pipelines.pipelines.hub_utils`]: what any saved pipeline needs to load by repo id — the repo layout
  written by [`HubPipelineMixin`] (shims for `trust_remote_code=True`, remote-code dLLMs) and the local Hub cache
  ([`add_to_hub_cache`]). It sits beside the pipelines and imports nothing above them.
- [`entrgi_pipelines.stack.export`]: the export of this project's embedded stack as three Hub repos with model cards
  ([`export_embedded_stack`], `entrgi export DIR`).

This module only re-exports both; new code imports from those modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .pipelines.hub_utils import (
    PIPELINE_MODULE,
    REMOTE_CODE_PREFIXES,
    HubPipelineMixin,
    add_to_hub_cache,
    write_repo_code,
)

if TYPE_CHECKING:  # for type checkers and linters; at run time `__getattr__` below imports them on first use
    from .stack.export import (
        MINILM_BASE_MODEL,
        check_safetensors_only,
        embedded_repo_ids,
        export_embedded_stack,
        save_reward_repo,
    )

_STACK_EXPORT_NAMES = {
    "MINILM_BASE_MODEL",
    "check_safetensors_only",
    "embedded_repo_ids",
    "export_embedded_stack",
    "save_reward_repo",
}


def __getattr__(name: str):
    # The stack's names load on first use, as this module's functions always loaded the stack: importing it never
    # imports the stack, so code beneath the stack that still imports `HubPipelineMixin` from here cannot cycle.
    if name in _STACK_EXPORT_NAMES:
        from .stack import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "MINILM_BASE_MODEL",
    "PIPELINE_MODULE",
    "REMOTE_CODE_PREFIXES",
    "HubPipelineMixin",
    "add_to_hub_cache",
    "check_safetensors_only",
    "embedded_repo_ids",
    "export_embedded_stack",
    "save_reward_repo",
    "write_repo_code",
]
