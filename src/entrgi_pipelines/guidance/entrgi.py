"""The EntRGi mixing and the logit ascent, as in `shared/design/method.md` (names follow the paper)."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import torch

from ..schedulers.scheduling_masked_diffusion import _invert_cdf, entropy_, nucleus_cdf, sample_tokens

logger = logging.getLogger(__name__)

GUIDANCE_METHODS = ("entrgi", "aps", "expectation", "none")
# When EntRGi's weight is computed: once per denoising step from the model's logits, or at every Adam step from the
# optimised ones (the authors' scripts).
ENTROPY_WEIGHTS = ("fixed", "step")


def entropy_weight(logits: torch.Tensor) -> torch.Tensor:
    """`w = H(softmax(logits)) / log V` per row, in [0, 1], from untempered logits and without gradient."""
    entropy = entropy_(logits.detach().float().log_softmax(-1))
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


def _probs_and_cdf(scaled: torch.Tensor, top_p: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The vocabulary-wide work of one Adam step: `probs = softmax(scaled)` (differentiable) and the CDF of its top-p
    nucleus, which the sampler inverts. Random-free, so that `torch.compile` can fuse it.

    Plain autograd: its softmax saves only its output, and its backward is one fused kernel. (The hand-written
    softmax and soft-embedding functions, which wrote into a CPU workspace to spare page faults, are gone: they kept
    four more `(P, V)` tensors alive for a call and did not pay: softmax, its backward and the CDF took 11.8 ms with
    them, 13.2 ms without, at P = 144, V = 30,000 on one CPU thread, within this machine's noise.)"""
    probs = scaled.softmax(-1)
    return probs, nucleus_cdf(probs.detach(), top_p)


@functools.cache
def _compiled_probs_and_cdf():
    return torch.compile(_probs_and_cdf)


_COMPILE_FAILED: list[str] = []  # the first error, once `torch.compile` failed in this process


def _guidance_step(scaled: torch.Tensor, top_p: float | None, compile: bool):
    """`_probs_and_cdf`, compiled when asked and possible; eager after a failed compilation (warned once)."""
    if compile and not _COMPILE_FAILED:
        try:
            return _compiled_probs_and_cdf()(scaled, top_p)
        except Exception as error:  # no C++ compiler, an unsupported device...: the same step, eagerly
            _COMPILE_FAILED.append(repr(error))
            logger.warning("torch.compile of the guidance step failed (%r): running it eagerly.", error)
    return _probs_and_cdf(scaled, top_p)


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
    compile: bool = False,
    index: tuple[torch.LongTensor, ...] | None = None,
    entropy_weight: str = "fixed",
) -> torch.Tensor | tuple[torch.Tensor, torch.BoolTensor]:
    """Ascends `reward_fn` with respect to the logits of the masked positions.

    `phi` starts as a float32 copy of `logits` (`(P, V)`, one row per masked position; or, with `index`, the rows
    `logits[index]` of larger logits, e.g. `(N, L, V)` with `index = (rows, columns)`). A fresh Adam optimiser runs
    `num_steps` steps; each step samples hard tokens from `softmax(top_p(phi / temperature))` and calls
    `reward_fn(probs, hard_tokens, weight)` (`probs = softmax(phi / temperature)`) to get one reward per sequence,
    whose sum is maximised. At `temperature=0` (greedy decoding) `probs = softmax(phi)` and the hard tokens are the
    argmax of `phi`, what greedy decoding commits. Only `phi` is optimised. Returns the optimised logits `(P, V)`,
    detached, in the dtype of `logits`.
    (Adam runs on `phi / temperature` with its learning rate divided and its epsilon multiplied by the temperature:
    the same steps of `phi` in exact arithmetic, without a `(P, V)` division and its backward at every step.)

    A row whose reward or gradient is not finite (NaN or inf) at any Adam step falls back to its `logits` unchanged:
    its gradients are dropped from then on, so it never reaches the sampler or the other rows as NaN. `row_groups`
    (`(P,)`, the index of each row's sequence in the reward) makes all rows of a sequence fall back together (without
    it, a non-finite reward anywhere makes every row fall back). With `return_fallback=True`, returns
    `(logits, fallback)` where `fallback` (`(P,)` bool) marks the rows that fell back.

    No host sync: random draws use `generator` (pass one on the logits' device, see `device_generator`), and the
    fallback bookkeeping stays on the device.

    Memory: with `index`, the gathered rows become `phi` in place and the fallback rows are read again from `logits`
    at the end, so at the backward of an Adam step five `(P, V)` float32 tensors are alive (`phi`, Adam's two
    moments, the softmax output and the gradient) besides the reward's own `d/d probs` (see
    benchmarks/guidance_memory.py).

    `entropy_weight` (EntRGi only): `"fixed"` computes `w` once from `logits` and keeps it over the Adam steps (this
    project's rule, method.md); `"step"` recomputes it from the optimised (untempered) logits at every Adam step, as
    the authors' scripts do (the first step is the same either way).

    `compile=True` runs the vocabulary-wide part of each step (tempered softmax, top-p nucleus, CDF) through
    `torch.compile` (falling back to eager, with a warning, where compilation fails); the same results to float
    tolerance. Opt-in: the first calls pay the compilation (see `docs/performance.md`).
    """
    if entropy_weight not in ENTROPY_WEIGHTS:
        raise ValueError(f"`entropy_weight` must be one of {ENTROPY_WEIGHTS}, got {entropy_weight!r}.")
    reweigh = entropy_weight == "step" and method == "entrgi"
    source = logits.detach()
    rows = source if index is None else source[index]
    weight = method_weight(method, rows)
    # Greedy decoding (temperature 0) commits the argmax: the relaxation is softmax(phi) and the hard token the argmax.
    greedy = temperature == 0
    temperature = 1.0 if greedy else temperature
    if num_steps == 0:
        guided = rows
        fallback = torch.zeros(rows.shape[:-1], dtype=torch.bool, device=rows.device)
        return (guided, fallback) if return_fallback else guided
    # phi / temperature; the gathered rows are ours to overwrite (`.float()` of float32 rows is the same tensor)
    scaled = rows.float().div_(temperature) if index is not None else rows.float().div(temperature)
    del rows
    scaled.requires_grad_(True)
    # The fused kernel is the same update, an order of magnitude faster on a (P, V) tensor.
    fused = scaled.device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam([scaled], lr=lr / temperature, eps=1e-8 * temperature, fused=fused)
    fallback = torch.zeros(scaled.shape[:-1], dtype=torch.bool, device=scaled.device)
    with torch.enable_grad():
        for step in range(num_steps):
            if reweigh and step > 0:  # w from the optimised phi (one temporary (P, V) product, then the entropy)
                weight = method_weight(method, scaled.detach() * temperature)
            if greedy:
                probs = scaled.softmax(-1)
                hard = scaled.detach().argmax(-1)
            elif top_k is None:  # the sampler shares the softmax
                probs, cdf = _guidance_step(scaled, top_p, compile)
                hard = _invert_cdf(cdf, generator)
                del cdf
            else:
                probs = scaled.softmax(-1)
                hard = sample_tokens(scaled.detach(), top_k=top_k, top_p=top_p, generator=generator)
            reward = reward_fn(probs, hard, weight)
            del probs  # the graph keeps what the backward needs
            finite = reward.isfinite()
            loss = -torch.where(finite, reward, 0.0).sum()
            optimizer.zero_grad(set_to_none=True)
            # the gradient as computed: accumulating it into `.grad` would copy it
            (scaled.grad,) = torch.autograd.grad(loss, [scaled], allow_unused=True)
            del reward, loss
            if scaled.grad is not None:
                # Device-side bookkeeping, no host sync: a bad row stops moving before Adam sees its gradient.
                fallback = fallback | _bad_rows(~finite, ~scaled.grad.sum(-1).isfinite(), row_groups)
                scaled.grad.masked_fill_(fallback[:, None], 0.0)
            optimizer.step()
    del optimizer  # Adam's two (P, V) moments go before the result is assembled
    phi = scaled.detach().mul_(temperature)  # back to phi, in place
    # An overflowing last step (e.g. a huge `lr`) shows in phi itself; -inf entries (blocked tokens) are fine.
    fallback = fallback | _bad_rows(torch.zeros_like(finite), ~phi.amax(-1).isfinite(), row_groups)
    original = source if index is None else source[index]
    guided = torch.where(fallback[:, None], original, phi.to(logits.dtype))
    return (guided, fallback) if return_fallback else guided


def _bad_rows(bad_reward: torch.BoolTensor, bad_grad: torch.BoolTensor, row_groups: torch.LongTensor | None):
    """Rows to leave unguided: all rows of a sequence whose reward or any row's gradient is not finite."""
    if row_groups is None or bad_reward.dim() != 1:
        return bad_grad | bad_reward.any()
    bad_sequence = bad_reward.int().index_add(0, row_groups, bad_grad.int()) > 0
    return bad_sequence[row_groups]
