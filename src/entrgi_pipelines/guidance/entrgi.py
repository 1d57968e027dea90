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
    row_groups: torch.LongTensor | None = None,
    return_fallback: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.BoolTensor]:
    """Ascends `reward_fn` with respect to the logits of the masked positions.

    `phi` starts as a float32 copy of `logits` (`(P, V)`, one row per masked position). A fresh Adam optimiser runs
    `num_steps` steps; each step samples hard tokens from `softmax(top_p(phi / temperature))` and calls
    `reward_fn(probs, hard_tokens, weight)` to get one reward per sequence, whose sum is maximised. Only `phi` is
    optimised. Returns the optimised logits, detached, in the dtype of `logits`.

    A row whose reward or gradient is not finite (NaN or inf) at any Adam step falls back to its `logits` unchanged:
    its gradients are dropped from then on, so it never reaches the sampler or the other rows as NaN. `row_groups`
    (`(P,)`, the index of each row's sequence in the reward) makes all rows of a sequence fall back together (without
    it, a non-finite reward anywhere makes every row fall back). With `return_fallback=True`, returns
    `(logits, fallback)` where `fallback` (`(P,)` bool) marks the rows that fell back; no host sync is made.
    """
    weight = method_weight(method, logits)
    phi = logits.detach().float().clone().requires_grad_(True)
    # The fused kernel is the same update, an order of magnitude faster on a (P, V) tensor.
    optimizer = torch.optim.Adam([phi], lr=lr, fused=phi.device.type in ("cpu", "cuda"))
    fallback = torch.zeros(phi.shape[:-1], dtype=torch.bool, device=phi.device)
    with torch.enable_grad():
        for _ in range(num_steps):
            scaled = phi / temperature
            probs = scaled.softmax(-1)
            hard = sample_tokens(scaled.detach(), top_k=top_k, top_p=top_p, generator=generator)
            reward = reward_fn(probs, hard, weight)
            finite = reward.isfinite()
            loss = -torch.where(finite, reward, 0.0).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=[phi])
            if phi.grad is not None:
                # Device-side bookkeeping, no host sync: a bad row stops moving before Adam sees its gradient.
                fallback = fallback | _bad_rows(~finite, ~phi.grad.sum(-1).isfinite(), row_groups)
                phi.grad.masked_fill_(fallback[:, None], 0.0)
            optimizer.step()
    if num_steps > 0:
        # An overflowing last step (e.g. a huge `lr`) shows in phi itself; -inf entries (blocked tokens) are fine.
        fallback = fallback | _bad_rows(torch.zeros_like(finite), ~phi.detach().amax(-1).isfinite(), row_groups)
    guided = torch.where(fallback[:, None], logits.detach(), phi.detach().to(logits.dtype))
    return (guided, fallback) if return_fallback else guided


def _bad_rows(bad_reward: torch.BoolTensor, bad_grad: torch.BoolTensor, row_groups: torch.LongTensor | None):
    """Rows to leave unguided: all rows of a sequence whose reward or any row's gradient is not finite."""
    if row_groups is None or bad_reward.dim() != 1:
        return bad_grad | bad_reward.any()
    bad_sequence = bad_reward.int().index_add(0, row_groups, bad_grad.int()) > 0
    return bad_sequence[row_groups]
