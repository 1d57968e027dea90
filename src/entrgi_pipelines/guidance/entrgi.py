"""The EntRGi mixing and the logit ascent, as in `shared/design/method.md` (names follow the paper)."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import torch

from ..schedulers.scheduling_masked_diffusion import Workspace, _invert_cdf, entropy_, nucleus_cdf, sample_tokens

logger = logging.getLogger(__name__)

GUIDANCE_METHODS = ("entrgi", "aps", "expectation", "none")


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


class _SoftmaxAndLog(torch.autograd.Function):
    """`(softmax(x), log_softmax(x))` from one log-softmax pass; only the softmax is differentiable.

    The sampler needs both, and the softmax's own backward is one fused pass; autograd through `log_softmax(x).exp()`
    would add a second. With a `Workspace`, the log-probabilities and the gradient are written into its tensors, and
    the probabilities too with `share_probs` (the caller then must not keep them past the step).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, workspace: Workspace | None, share_probs: bool = False):
        log_probs = x.log_softmax(-1) if workspace is None else torch.log_softmax(x, -1, out=workspace.get("lp", x))
        probs = torch.exp(log_probs, out=workspace.get("probs", x)) if share_probs else log_probs.exp()
        ctx.workspace = workspace
        ctx.save_for_backward(probs)
        ctx.mark_non_differentiable(log_probs)
        return probs, log_probs

    @staticmethod
    def backward(ctx, grad_probs: torch.Tensor, _grad_log_probs: torch.Tensor):
        (probs,) = ctx.saved_tensors
        if ctx.workspace is None:
            return torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype), None, None
        grad = ctx.workspace.get("grad", probs)
        return torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype, grad_input=grad), None, None


def _probs_and_cdf(
    scaled: torch.Tensor, top_p: float | None, workspace: Workspace | None = None, share_probs: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The vocabulary-wide work of one Adam step: `probs = softmax(scaled)` (differentiable) and the CDF of its top-p
    nucleus, which the sampler inverts. Random-free, so that `torch.compile` can fuse it."""
    probs, log_probs = _SoftmaxAndLog.apply(scaled, workspace, share_probs)
    return probs, nucleus_cdf(log_probs, probs.detach(), top_p, workspace)


@functools.cache
def _compiled_probs_and_cdf():
    return torch.compile(_probs_and_cdf)


_COMPILE_FAILED: list[str] = []  # the first error, once `torch.compile` failed in this process


def _guidance_step(
    scaled: torch.Tensor, top_p: float | None, compile: bool, workspace: Workspace | None = None, share_probs=False
):
    """`_probs_and_cdf`, compiled when asked and possible (without the workspace: the compiled step fuses its passes
    instead); eager after a failed compilation (warned once)."""
    if compile and not _COMPILE_FAILED:
        try:
            return _compiled_probs_and_cdf()(scaled, top_p)
        except Exception as error:  # no C++ compiler, an unsupported device...: the same step, eagerly
            _COMPILE_FAILED.append(repr(error))
            logger.warning("torch.compile of the guidance step failed (%r): running it eagerly.", error)
    return _probs_and_cdf(scaled, top_p, workspace, share_probs)


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
    workspace: Workspace | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.BoolTensor]:
    """Ascends `reward_fn` with respect to the logits of the masked positions.

    `phi` starts as a float32 copy of `logits` (`(P, V)`, one row per masked position). A fresh Adam optimiser runs
    `num_steps` steps; each step samples hard tokens from `softmax(top_p(phi / temperature))` and calls
    `reward_fn(probs, hard_tokens, weight)` (`probs = softmax(phi / temperature)`) to get one reward per sequence,
    whose sum is maximised. At `temperature=0` (greedy decoding) `probs = softmax(phi)` and the hard tokens are the
    argmax of `phi`, what greedy decoding commits. Only `phi` is optimised. Returns the optimised logits, detached,
    in the dtype of `logits`.
    (Adam runs on `phi / temperature` with its learning rate divided and its epsilon multiplied by the temperature:
    the same steps of `phi` in exact arithmetic, without a `(P, V)` division and its backward at every step.)

    A row whose reward or gradient is not finite (NaN or inf) at any Adam step falls back to its `logits` unchanged:
    its gradients are dropped from then on, so it never reaches the sampler or the other rows as NaN. `row_groups`
    (`(P,)`, the index of each row's sequence in the reward) makes all rows of a sequence fall back together (without
    it, a non-finite reward anywhere makes every row fall back). With `return_fallback=True`, returns
    `(logits, fallback)` where `fallback` (`(P,)` bool) marks the rows that fell back; no host sync is made.

    `compile=True` runs the vocabulary-wide part of each step (tempered softmax, top-p nucleus, CDF) through
    `torch.compile` (falling back to eager, with a warning, where compilation fails); the same results to float
    tolerance. Opt-in: the first calls pay the compilation (see `docs/performance.md`).

    The `(P, V)` temporaries of the first Adam step are reused by the others. A caller that repeats the ascent (the
    guided steps of a call) may pass its own `workspace` to reuse them across calls; the `probs` that `reward_fn`
    receives are then workspace tensors too, valid until the next step.
    """
    weight = method_weight(method, logits)
    # Greedy decoding (temperature 0) commits the argmax: the relaxation is softmax(phi) and the hard token the argmax.
    greedy = temperature == 0
    temperature = 1.0 if greedy else temperature
    scaled = logits.detach().float().div(temperature).requires_grad_(True)  # phi / temperature
    # The fused kernel is the same update, an order of magnitude faster on a (P, V) tensor.
    fused = scaled.device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam([scaled], lr=lr / temperature, eps=1e-8 * temperature, fused=fused)
    fallback = torch.zeros(scaled.shape[:-1], dtype=torch.bool, device=scaled.device)
    share_probs = workspace is not None  # a caller's workspace: its reward function keeps no `probs`
    workspace = Workspace() if workspace is None else workspace
    with torch.enable_grad():
        for _ in range(num_steps):
            if greedy:
                probs, _ = _SoftmaxAndLog.apply(scaled, workspace, share_probs)
                hard = scaled.detach().argmax(-1)
            elif top_k is None:  # the sampler shares the softmax
                probs, cdf = _guidance_step(scaled, top_p, compile, workspace, share_probs)
                hard = _invert_cdf(cdf, generator)
            else:
                probs, _ = _SoftmaxAndLog.apply(scaled, workspace, share_probs)
                hard = sample_tokens(scaled.detach(), top_k=top_k, top_p=top_p, generator=generator)
            reward = reward_fn(probs, hard, weight)
            finite = reward.isfinite()
            loss = -torch.where(finite, reward, 0.0).sum()
            optimizer.zero_grad(set_to_none=True)
            # the gradient as computed (a workspace tensor): accumulating it into `.grad` would copy it
            (scaled.grad,) = torch.autograd.grad(loss, [scaled], allow_unused=True)
            if scaled.grad is not None:
                # Device-side bookkeeping, no host sync: a bad row stops moving before Adam sees its gradient.
                fallback = fallback | _bad_rows(~finite, ~scaled.grad.sum(-1).isfinite(), row_groups)
                scaled.grad.masked_fill_(fallback[:, None], 0.0)
            optimizer.step()
    # back to phi, in place (without a step the logits come back exactly)
    phi = scaled.detach().mul_(temperature) if num_steps > 0 else logits.detach()
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
