"""The EntRGi mixing and the logit ascent, as in `shared/design/method.md` (names follow the paper)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..schedulers.scheduling_masked_diffusion import sample_tokens

GUIDANCE_METHODS = ("entrgi", "aps", "expectation", "none")


def entropy_weight(logits: torch.Tensor) -> torch.Tensor:
    """`w = H(softmax(logits)) / log V` per row, in [0, 1], from untempered logits and without gradient."""
    logits = logits.detach().float()
    log_probs = logits.log_softmax(-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(-1)
    return (entropy / math.log(logits.shape[-1])).clamp(0.0, 1.0)


def entrgi_embeddings(soft: torch.Tensor, hard: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`soft + stopgrad(w * (hard - soft))`: forward value `(1 - w) soft + w hard`, gradient through `soft` only.

    `weight` is one value per row (`w = 1`: straight-through / APS, `w = 0`: expectation).
    """
    return soft + (weight[..., None].to(soft.dtype) * (hard - soft)).detach()


def method_weight(method: str, logits: torch.Tensor) -> torch.Tensor:
    """The per-position weight of a guidance method: entropy for EntRGi, 1 for APS, 0 for expectation."""
    if method == "entrgi":
        return entropy_weight(logits)
    if method == "aps":
        return logits.new_ones(logits.shape[:-1], dtype=torch.float32)
    if method == "expectation":
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    raise ValueError(f"`guidance` must be one of {GUIDANCE_METHODS[:-1]} to build a reward input, got {method!r}.")


def optimize_logits(
    logits: torch.Tensor,
    reward_fn: Callable[[torch.Tensor, torch.LongTensor], torch.Tensor],
    *,
    method: str = "entrgi",
    num_steps: int = 3,
    lr: float = 0.5,
    temperature: float = 0.7,
    top_p: float | None = None,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ascends `reward_fn` with respect to the logits of the masked positions.

    `phi` starts as a float32 copy of `logits` (`(P, V)`, one row per masked position). A fresh Adam optimiser runs
    `num_steps` steps; each step samples hard tokens from `softmax(top_p(phi / temperature))` and calls
    `reward_fn(probs, hard_tokens, weight)` to get one reward per sequence, whose sum is maximised. Only `phi` is
    optimised. Returns the optimised logits, detached, in the dtype of `logits`.
    """
    weight = method_weight(method, logits)
    phi = logits.detach().float().clone().requires_grad_(True)
    # The fused kernel is the same update, an order of magnitude faster on a (P, V) tensor.
    optimizer = torch.optim.Adam([phi], lr=lr, fused=phi.device.type in ("cpu", "cuda"))
    with torch.enable_grad():
        for _ in range(num_steps):
            scaled = phi / temperature
            probs = scaled.softmax(-1)
            hard = sample_tokens(scaled.detach(), top_k=top_k, top_p=top_p, generator=generator)
            loss = -reward_fn(probs, hard, weight).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=[phi])
            optimizer.step()
    return phi.detach().to(logits.dtype)
