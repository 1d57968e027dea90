"""Scheduler for masked (absorbing-state) discrete diffusion: sample candidates, commit the most confident."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from ..validation import check_integer, check_number

CONFIDENCE_RULES = ("entropy", "maskgit_plus", "topk_margin", "origin", "anchor", "random")
COMMIT_SCHEDULES = ("time", "even", "time_floor")
# Subtracted from the confidence of end-of-sequence candidates so that they are committed last.
_EOS_PENALTY = 1e4


@dataclass
class MaskedDiffusionSchedulerOutput(BaseOutput):
    """
    Output of [`MaskedDiffusionScheduler.step`].

    Args:
        prev_sample (`torch.LongTensor` of shape `(batch_size, gen_length)`):
            The response tokens after this step: the committed positions hold their sampled token, the rest are
            unchanged (still masked where they were).
        sampled_tokens (`torch.LongTensor` of shape `(batch_size, gen_length)`):
            The candidate sampled at every masked position (the input token elsewhere).
        commit_mask (`torch.BoolTensor` of shape `(batch_size, gen_length)`):
            The positions committed at this step.
        confidence (`torch.Tensor` of shape `(batch_size, gen_length)`):
            The confidence that ranked the masked positions (`-inf` at positions that were not masked).
    """

    prev_sample: torch.LongTensor
    sampled_tokens: torch.LongTensor
    commit_mask: torch.BoolTensor
    confidence: torch.Tensor


# The nucleus boundary is found on a histogram of log-probabilities (bins of 40 / 4095 nats, about 1% in
# probability) instead of a full sort of the vocabulary, which costs several times more on CPU.
_TOP_P_BINS, _TOP_P_SPAN = 4096, 40.0
_BINS_PER_NAT = (_TOP_P_BINS - 1) / _TOP_P_SPAN
_TAIL_BINS = 64


def _nucleus_bins(vocab_size: int, top_p: float) -> int:
    """Histogram bins that resolve the nucleus: a token less probable than `(1 - top_p) / V` is never in it (all
    such tokens together hold less than `1 - top_p`), so every token from there on can share the last bin."""
    span = min(_TOP_P_SPAN, math.log(vocab_size / (1.0 - top_p)))
    return min(_TOP_P_BINS, math.ceil(span * _BINS_PER_NAT) + 1)


class Workspace:
    """Tensors handed out by name and handed out again (their leading rows) while they are large enough: for loops
    that repeat the same vocabulary-wide work on as many or fewer rows (the Adam steps of a guidance step, and the
    guided steps of a call, whose masked rows only decrease).

    On CPU a new large tensor costs page faults (glibc maps a fresh block for it and unmaps it when it is freed), which
    cost more than the arithmetic of a pass over it; with a workspace only the first pass of a loop pays them.
    """

    def __init__(self):
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """An uninitialised tensor of `like`'s shape (and `dtype`, by default `like`'s), contiguous."""
        dtype = like.dtype if dtype is None else dtype
        tensor = self._tensors.get(name)
        if (
            tensor is None
            or tensor.dim() != like.dim()
            or tensor.shape[1:] != like.shape[1:]
            or tensor.shape[0] < like.shape[0]
            or tensor.dtype != dtype
            or tensor.device != like.device
        ):
            tensor = self._tensors[name] = torch.empty(like.shape, dtype=dtype, device=like.device)
        return tensor[: like.shape[0]]


def _new(workspace: Workspace | None, name: str, like: torch.Tensor, dtype: torch.dtype | None = None):
    if workspace is None:
        return torch.empty_like(like, dtype=dtype)
    return workspace.get(name, like, dtype)


def _nucleus_position(log_probs: torch.Tensor, probs: torch.Tensor, top_p: float, workspace: Workspace | None = None):
    """`(position, kept_bins)`: each token's histogram position (float, bin = its floor; a new tensor, or the
    workspace's, that the caller may overwrite) and, per row, how many leading bins are in the nucleus. A token is
    kept iff `position < kept_bins`."""
    bins, vocab_size = _nucleus_bins(log_probs.shape[-1], top_p), log_probs.shape[-1]
    # bin 0 holds the most probable tokens. Tokens past the span (never in the nucleus) go to _TAIL_BINS trailing bins
    # by column rather than to one: a scatter-add into a single bin is a chain of dependent writes, several times
    # slower on CPU. In place on the one temporary: on CPU every new (P, V) tensor costs page faults.
    position = torch.mul(log_probs, -_BINS_PER_NAT, out=_new(workspace, "position", log_probs))
    tail = torch.arange(vocab_size, device=position.device, dtype=position.dtype).remainder_(_TAIL_BINS)
    torch.minimum(position, tail.add_(bins - 1), out=position)
    position.nan_to_num_(nan=bins - 1.0)  # a NaN never becomes an out-of-range index: it joins the tail
    key = _new(workspace, "key", position, torch.long).copy_(position)  # truncation, as `.long()`
    mass = probs.new_zeros(*position.shape[:-1], bins - 1 + _TAIL_BINS).scatter_add_(-1, key, probs)
    # A bin is kept while the mass of the strictly more probable bins (the previous cumulative sum, which never
    # decreases, so the kept bins are a prefix) is below top_p; bin 0 always is.
    return position, (mass.cumsum(-1) < top_p).sum(-1, keepdim=True) + 1


def _nucleus(log_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask of the tokens outside the top-p nucleus, from log-probabilities (see `filter_logits`)."""
    position, kept_bins = _nucleus_position(log_probs, log_probs.exp(), top_p)
    return position >= kept_bins


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Sets logits outside the top-k and outside the top-p nucleus to `-inf` (rows are independent).

    The nucleus keeps every token whose more probable tokens hold less than `top_p` of the mass, so the most likely
    token always survives. Tokens within about 1% in probability of the last token of the nucleus are kept too
    (the boundary is resolved on a log-probability histogram rather than by sorting the vocabulary).
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = logits.masked_fill(_nucleus(logits.float().log_softmax(-1), top_p), float("-inf"))
    return logits


def entropy_(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of `log_probs` (natural log), computed in place: `log_probs` is overwritten.

    One temporary instead of four (on CPU every new `(P, V)` tensor costs page faults). `0 * log 0` counts as 0; a
    NaN stays NaN.
    """
    probs = log_probs.exp()
    return -probs.mul_(log_probs.clamp_(min=torch.finfo(log_probs.dtype).min)).sum(-1)


def _uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.rand(*shape, generator=generator, device=source).to(device)


def _invert_cdf(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.LongTensor:
    """The index where one uniform number per row, scaled by the row's total mass, falls in the row's CDF."""
    uniform = _uniform((*cdf.shape[:-1], 1), generator, cdf.device)
    tokens = torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True)
    # float rounding can put the scaled number at the very end of the CDF
    return tokens.squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def sample_from_logits(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.LongTensor:
    """One categorical sample per row of `logits`, by inverting the CDF with one uniform number per row.

    Reproducible with a seeded `generator` (drawn on the generator's device); tokens at `-inf` are never drawn.
    """
    return _invert_cdf(logits.float().softmax(-1).cumsum(-1), generator)


def sample_tokens(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None, generator=None
) -> torch.LongTensor:
    """`sample_from_logits(filter_logits(logits, top_k, top_p))` with the vocabulary-wide passes shared."""
    if top_k is not None and top_k < logits.shape[-1]:
        logits = filter_logits(logits, top_k=top_k)
    log_probs = logits.float().log_softmax(-1)
    return sample_from_log_probs(log_probs, log_probs.exp(), top_p, generator)


def sample_from_log_probs(
    log_probs: torch.Tensor, probs: torch.Tensor, top_p: float | None = None, generator=None
) -> torch.LongTensor:
    """One sample per row from `probs = log_probs.exp()` restricted to its top-p nucleus (the same draws as
    `sample_tokens` on the logits): for callers that already hold both, so that no vocabulary pass is repeated.
    Neither input is modified."""
    return _invert_cdf(nucleus_cdf(log_probs, probs, top_p), generator)


def nucleus_cdf(
    log_probs: torch.Tensor, probs: torch.Tensor, top_p: float | None = None, workspace: Workspace | None = None
) -> torch.Tensor:
    """The cumulative sum of `probs = log_probs.exp()` over its top-p nucleus (zero mass outside it), a new tensor (or
    the `workspace`'s); its last entry is the nucleus' mass. Random-free, so that it can be compiled; `_invert_cdf`
    draws from it."""
    if top_p is None or top_p >= 1.0:
        return torch.cumsum(probs, -1, out=_new(workspace, "position", probs))
    position, kept_bins = _nucleus_position(log_probs, probs, top_p, workspace)
    # the nucleus' probabilities, then their CDF, written over `position` (no new (P, V) tensor)
    kept = torch.lt(position, kept_bins, out=_new(workspace, "kept", position, torch.bool))
    torch.where(kept, probs, probs.new_zeros(()), out=position)
    return position.cumsum_(-1)


class MaskedDiffusionScheduler(SchedulerMixin, ConfigMixin):
    """
    Scheduler for masked discrete diffusion language models (MDLM, Dream, LLaDA, BERT-style).

    At every step a token is sampled for every masked position of the current block (the whole response when
    `block_length` is `None`) and some of them are committed, the most confident first; the rest stay masked.

    **Blocks.** With `block_length`, the response is cut into `gen_length / block_length` blocks decoded left to
    right (semi-autoregressive, as LLaDA-Instruct is used); the `num_inference_steps` steps are split evenly over
    them, only the current block's positions can be committed, and later blocks stay masked (the model still sees
    them, masked). With blocks, a response whose first end-of-sequence token is committed with everything before it
    is finished: [`~MaskedDiffusionScheduler.finished`] tells the pipeline when every response is, and
    [`~MaskedDiffusionScheduler.fill_after_eos`] makes the rest of each finished response end-of-sequence.

    **Commit schedules** (`commit_schedule`), how many of the block's `n` masked positions step `i` commits (all that
    remain at the block's last step); time runs from `t = 1` to `t = eps` within each block,
    `t_i = linspace(1, eps, S + 1)` for `S` steps per block:
        - `"time"`: `round(n * (1 - t_{i+1} / t_i))` (the default).
        - `"even"`: LLaDA's: the block's masked count split evenly over its steps, the remainder to the first steps
          (`ceil(n / steps_left)`, the same counts).
        - `"time_floor"`: Dream's: `floor(n * (1 - t_{i+1} / t_i))`, on its float32 time grid.

    **Threshold (parallel) decoding.** With `threshold`, a step commits every candidate of the current block whose
    confidence is at least `threshold`, and at least `minimal_topk`; a block ends as soon as it is full (in every
    row), so the number of model calls depends on the text; the block's last budgeted step commits all that remain.
    The threshold is read on a probability scale: the sampled token's probability (`maskgit_plus`, `anchor`), the
    margin (`topk_margin`) or `exp(-entropy)` (`entropy`).

    Confidence rules (`confidence`):
        - `"entropy"`: negative entropy of the (tempered) distribution of the position.
        - `"maskgit_plus"`: probability of the sampled token (LLaDA's `low_confidence` remasking).
        - `"topk_margin"`: difference between the two largest probabilities.
        - `"origin"`: the original MDLM ancestral sampler: every masked position is committed independently with
          probability `1 - t_{i+1} / t_i`, so the number committed per step varies.
        - `"anchor"`: committed tokens anchor the rest: masked positions nearest a committed (or prompt) token go
          first, ties broken by the probability of the sampled token. Text grows outward from what is fixed.
        - `"random"`: a uniformly random order (LLaDA's `random` remasking), counts from the commit schedule.

    With `confidence_temperature` (Dream's `alg_temp`), the positions to commit are drawn without replacement from
    `softmax(confidence / confidence_temperature)` instead of taking the most confident ones.

    Confidences use `confidence_logits` when [`~MaskedDiffusionScheduler.step`] gets them (the pipeline passes the
    model's unguided logits, so reward guidance changes *what* is sampled, not *where*), else `model_output`. At
    `temperature=0` decoding is greedy: the argmax is taken and confidences come from the untempered distribution.
    The mask token is never a candidate.

    Args:
        eps (`float`, defaults to 1e-3): the final time.
        confidence (`str`, defaults to `"entropy"`): the rule above that orders the commits.
        eos_last (`bool`, defaults to `True`): commit end-of-sequence candidates after all others (ranked rules;
            `origin` commits every position independently and ignores it).
        block_length (`int`, *optional*): the block length; `None` decodes the whole response as one block.
        commit_schedule (`str`, defaults to `"time"`): `"time"`, `"even"` or `"time_floor"` (above).
        threshold (`float`, *optional*): commit every candidate whose confidence is at least this, in (0, 1].
        minimal_topk (`int`, defaults to 1): with `threshold`, the fewest positions a step commits.
        confidence_temperature (`float`, *optional*): draw the committed positions from
            `softmax(confidence / confidence_temperature)` (> 0); `None` or 0 takes the most confident.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines import MaskedDiffusionScheduler

        >>> scheduler = MaskedDiffusionScheduler(confidence="maskgit_plus", block_length=4, commit_schedule="even")
        >>> scheduler.set_timesteps(4, gen_length=8)  # two blocks of 4 tokens, two steps each
        >>> scheduler.num_blocks, scheduler.steps_per_block
        (2, 2)
        >>> sample = torch.full((2, 8), 99)  # two responses of 8 tokens, all masked (mask id 99)
        >>> generator = torch.Generator().manual_seed(0)
        >>> for t in scheduler.timesteps:
        ...     logits = torch.randn(2, 8, 100, generator=generator)
        ...     sample = scheduler.step(logits, t, sample, mask_token_id=99, generator=generator).prev_sample
        >>> bool((sample != 99).all())
        True
        ```
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        eps: float = 1e-3,
        confidence: str = "entropy",
        eos_last: bool = True,
        block_length: int | None = None,
        commit_schedule: str = "time",
        threshold: float | None = None,
        minimal_topk: int = 1,
        confidence_temperature: float | None = None,
    ):
        if confidence not in CONFIDENCE_RULES:
            raise ValueError(f"`confidence` must be one of {CONFIDENCE_RULES}, got {confidence!r}.")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"`eps` must be in (0, 1), got {eps}.")
        if commit_schedule not in COMMIT_SCHEDULES:
            raise ValueError(
                f"`commit_schedule` must be one of {COMMIT_SCHEDULES} (today's rule, LLaDA's, Dream's), got "
                f"{commit_schedule!r}."
            )
        check_decoding_arguments(
            block_length=block_length, threshold=threshold, minimal_topk=minimal_topk, confidence=confidence
        )
        if confidence_temperature is not None and not (
            isinstance(confidence_temperature, numbers.Real)
            and not isinstance(confidence_temperature, bool)
            and 0 <= confidence_temperature < math.inf
        ):
            raise ValueError(
                "`confidence_temperature` must be a finite number >= 0 (0 or None: the most confident positions), "
                f"got {confidence_temperature!r}."
            )
        self.num_inference_steps: int | None = None
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self.num_blocks = 1
        self.steps_per_block: int | None = None
        self.block_length: int | None = None
        self._blockwise = False
        self._step_index: int | None = None

    @property
    def step_index(self) -> int | None:
        """The index (in `timesteps`) of the step to be taken next (`None` before the first step). After a block
        ends early (threshold decoding), it skips to the next block's first step."""
        return self._step_index

    def set_timesteps(
        self,
        num_inference_steps: int,
        device: str | torch.device | None = None,
        gen_length: int | None = None,
        block_length: int | None = None,
    ) -> None:
        """Sets the `num_inference_steps` times: `S = num_inference_steps / num_blocks` steps per block, each block on
        the grid `t_0 = 1 > ... > t_{S-1}` (`sigmas` holds it and `t_S = eps`), repeated for every block.

        Args:
            num_inference_steps (`int`): all the steps of a call (the budget, with threshold decoding).
            device (*optional*): where `timesteps` go.
            gen_length (`int`, *optional*): the response length; needed for blocks.
            block_length (`int`, *optional*): overrides the config's `block_length` for this call.
        """
        if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        block_length = self.config.block_length if block_length is None else block_length
        check_decoding_arguments(
            block_length=block_length, gen_length=gen_length, num_inference_steps=num_inference_steps
        )
        self._blockwise = block_length is not None and gen_length is not None
        self.num_blocks = gen_length // block_length if self._blockwise else 1
        self.block_length = block_length if self._blockwise else gen_length
        self.num_inference_steps = num_inference_steps
        self.steps_per_block = num_inference_steps // self.num_blocks
        self.sigmas = torch.linspace(1.0, self.config.eps, self.steps_per_block + 1, dtype=torch.float64)
        self.timesteps = self.sigmas[:-1].repeat(self.num_blocks).to(device=device, dtype=torch.float32)
        self._step_index = None

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """The first position of `timestep` in `timesteps`."""
        t = float(timestep)
        index = int(torch.argmin((self.sigmas[:-1] - t).abs()))
        if abs(float(self.sigmas[index]) - t) > 1e-5:
            raise ValueError(f"`timestep` {t} is not one of the scheduler's timesteps; call `set_timesteps` first.")
        return index

    def block_bounds(self, step_index: int) -> tuple[int, int]:
        """`(start, end)`: the response positions of the block that step `step_index` decodes."""
        if self.block_length is None:
            raise ValueError("Call `set_timesteps(..., gen_length=...)` before asking for block bounds.")
        block = step_index // self.steps_per_block
        return block * self.block_length, (block + 1) * self.block_length

    def unmask_fraction(self, step_index: int) -> float:
        """`1 - t_{i+1} / t_i` within the block: the expected fraction of its masked positions committed at step
        `step_index` (1 at the block's last step)."""
        step = step_index % self.steps_per_block
        if step >= self.steps_per_block - 1:
            return 1.0
        return float(1.0 - self.sigmas[step + 1] / self.sigmas[step])

    def num_tokens_to_commit(self, num_masked: torch.LongTensor, step_index: int) -> torch.LongTensor:
        """How many of the block's `num_masked` positions (per row) to commit at step `step_index`, by the commit
        schedule; all of them at the block's last step."""
        step = step_index % self.steps_per_block
        if step >= self.steps_per_block - 1:
            return num_masked
        schedule = self.config.commit_schedule
        if schedule == "even":
            steps_left = self.steps_per_block - step
            return torch.div(num_masked + steps_left - 1, steps_left, rounding_mode="floor")
        if schedule == "time_floor":
            # Dream's arithmetic: a float32 grid and a float32 product, truncated
            grid = torch.linspace(1.0, self.config.eps, self.steps_per_block + 1)
            fraction = 1 - grid[step + 1] / grid[step]
            return (num_masked.float() * fraction.to(num_masked.device)).long().clamp(max=num_masked)
        return torch.round(num_masked * self.unmask_fraction(step_index)).long().clamp(max=num_masked)

    def _confidence(
        self,
        logits: torch.Tensor,
        tokens: torch.LongTensor,
        candidates: torch.BoolTensor,
        masked: torch.BoolTensor,
        generator,
    ) -> torch.Tensor:
        """Confidence of each candidate position (rows of `logits` are the candidates, in order; `masked` marks every
        masked position of the response, later blocks included)."""
        rule = self.config.confidence
        if rule in ("origin", "random"):
            return _uniform(tokens.shape, generator, logits.device)
        log_probs = logits.float().log_softmax(-1)
        if rule == "entropy":
            return -entropy_(log_probs)
        if rule == "topk_margin":
            top2 = log_probs.topk(2, dim=-1).values.exp()
            return top2[:, 0] - top2[:, 1]
        token_prob = log_probs.gather(-1, tokens[:, None]).squeeze(-1).exp()
        if rule == "maskgit_plus":
            return token_prob
        return token_prob - _anchor_distance(masked)[candidates].to(token_prob.dtype)

    def _threshold_scale(self, confidence: torch.Tensor, masked: torch.BoolTensor) -> torch.Tensor:
        """The confidence on the probability scale that `threshold` is compared with."""
        rule = self.config.confidence
        if rule == "entropy":
            return confidence.exp()
        if rule == "anchor":  # the token's probability, without the distance
            return confidence + _anchor_distance(masked).to(confidence.dtype)
        return confidence

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.LongTensor,
        *,
        mask_token_id: int,
        confidence_logits: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        threshold: float | None = None,
        minimal_topk: int | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> MaskedDiffusionSchedulerOutput | tuple:
        """
        Samples every masked position of the current block and commits the most confident ones.

        Args:
            model_output (`torch.Tensor` of shape `(batch_size, gen_length, vocab_size)`):
                Logits for the response positions (already aligned: for a Dream-style model, shifted by one).
            timestep (`float` or `torch.Tensor`): the current time, one of `self.timesteps`.
            sample (`torch.LongTensor` of shape `(batch_size, gen_length)`): the current response tokens.
            mask_token_id (`int`): the id that marks a masked position.
            confidence_logits (`torch.Tensor`, *optional*): logits the confidence is computed from (see class doc).
            temperature (`float`, defaults to 1.0): sampling temperature (>= 0; 0 is greedy); confidences use it too.
            top_p (`float`, *optional*): nucleus sampling mass in (0, 1].
            top_k (`int`, *optional*): sample among the `top_k` most likely tokens.
            eos_token_id (`int`, *optional*): end-of-sequence id, committed last when `eos_last=True`.
            threshold (`float`, *optional*): overrides the config's `threshold` for this step.
            minimal_topk (`int`, *optional*): overrides the config's `minimal_topk` for this step.
            generator (`torch.Generator`, *optional*): makes the sampling reproducible.
            return_dict (`bool`, defaults to `True`): return a [`MaskedDiffusionSchedulerOutput`] or a tuple.

        Returns:
            [`MaskedDiffusionSchedulerOutput`] or `tuple` `(prev_sample, sampled_tokens, commit_mask, confidence)`.
        """
        if self.timesteps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        _check_step_inputs(model_output, sample, mask_token_id, temperature, top_p, top_k)
        threshold = self.config.threshold if threshold is None else threshold
        minimal_topk = self.config.minimal_topk if minimal_topk is None else minimal_topk
        check_decoding_arguments(threshold=threshold, minimal_topk=minimal_topk, confidence=self.config.confidence)
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep)
        step_index = self._step_index
        last_of_block = step_index % self.steps_per_block == self.steps_per_block - 1

        masked = all_masked = sample == mask_token_id
        if self._blockwise:  # the candidates: the current block's masked positions
            start, end = self.block_bounds(step_index)
            in_block = torch.zeros(sample.shape[1], dtype=torch.bool, device=sample.device)
            in_block[start:end] = True
            masked = all_masked & in_block
        # Vocabulary-wide work touches masked rows only. The mask token itself is never a candidate.
        # (boolean indexing copies: dividing that copy in place saves a (P, V) tensor)
        greedy = temperature == 0
        logits = model_output[masked].float()
        if not greedy:
            logits.div_(temperature)
        logits[:, mask_token_id] = float("-inf")
        # One sync per step: a row without a distribution (NaN, +inf, or nothing but -inf) cannot be sampled.
        invalid = int((~logits.amax(-1).isfinite()).sum()) if logits.numel() else 0
        if invalid:
            raise ValueError(
                f"`model_output` has no valid distribution at {invalid} masked position(s) at step {step_index} "
                "(NaN, +inf, or -inf everywhere but the mask token): check the model and the callbacks that edit "
                "the logits."
            )
        if greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = sample_tokens(logits, top_k=top_k, top_p=top_p, generator=generator)
        if confidence_logits is None:
            source = logits
        else:
            source = confidence_logits[masked].float()
            if not greedy:
                source.div_(temperature)
        row_confidence = self._confidence(source, tokens, masked, all_masked, generator)

        sampled = sample.masked_scatter(masked, tokens)
        confidence = torch.full(sample.shape, float("-inf"), device=sample.device)
        confidence = confidence.masked_scatter(masked, row_confidence.to(confidence.dtype))
        if self.config.confidence == "origin":
            commit = masked & (confidence < self.unmask_fraction(step_index))
        else:
            num_masked = masked.sum(-1)
            if last_of_block:
                k = num_masked
            elif threshold is not None:
                above = (self._threshold_scale(confidence, all_masked) >= threshold) & masked
                k = torch.minimum(above.sum(-1).clamp(min=minimal_topk), num_masked)
            else:
                k = self.num_tokens_to_commit(num_masked, step_index)
            key = confidence
            temperature_c = self.config.confidence_temperature
            if temperature_c:
                # Gumbel top-k: the first k of these keys are k draws without replacement from softmax(c / T_c)
                gumbel = -torch.log(-torch.log(_uniform(sample.shape, generator, sample.device).clamp_(min=1e-20)))
                key = torch.where(masked, confidence / temperature_c + gumbel, confidence)
            if self.config.eos_last and eos_token_id is not None:
                eos = masked & (sampled == eos_token_id)
                key = torch.where(eos, key - _EOS_PENALTY, key)
                confidence = torch.where(eos, confidence - _EOS_PENALTY, confidence)  # the output shows the ranking
            ranks = key.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
            commit = masked & (ranks < k[:, None])
        prev_sample = torch.where(commit, sampled, sample)
        self._step_index += 1
        if not last_of_block and self._blockwise | (threshold is not None):
            # a block full in every row ends early (one host sync): its remaining budgeted steps are skipped
            if not bool((masked & ~commit).any()):
                block = step_index // self.steps_per_block
                self._step_index = (block + 1) * self.steps_per_block

        if not return_dict:
            return prev_sample, sampled, commit, confidence
        return MaskedDiffusionSchedulerOutput(
            prev_sample=prev_sample, sampled_tokens=sampled, commit_mask=commit, confidence=confidence
        )

    def finished(self, sample: torch.LongTensor, mask_token_id: int, eos_token_id: int | None) -> torch.BoolTensor:
        """Per row of `sample` `(N, L)`: whether its first end-of-sequence token is committed and no position
        before it is masked (nothing later can change its text)."""
        if eos_token_id is None:
            return torch.zeros(sample.shape[0], dtype=torch.bool, device=sample.device)
        is_eos = sample == eos_token_id
        first_eos = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), sample.shape[1])
        positions = torch.arange(sample.shape[1], device=sample.device)
        masked_before = ((sample == mask_token_id) & (positions < first_eos[:, None])).any(-1)
        return is_eos.any(-1) & ~masked_before

    @staticmethod
    def fill_after_eos(sample: torch.LongTensor, finished: torch.BoolTensor, eos_token_id: int) -> torch.LongTensor:
        """`sample` with every position after a finished row's first end-of-sequence token set to it."""
        after = (sample == eos_token_id).int().cumsum(-1) > 0
        return torch.where(after & finished[:, None], eos_token_id, sample)


def check_decoding_arguments(
    *,
    block_length: Any = None,
    gen_length: int | None = None,
    num_inference_steps: int | None = None,
    threshold: Any = None,
    minimal_topk: Any = 1,
    confidence: str | None = None,
) -> None:
    """Refuses decoding settings that cannot work, naming the argument and the fix (the scheduler's config, its
    `set_timesteps` and `step`, and the pipeline's call share it)."""
    if block_length is not None:
        check_integer("block_length", block_length, minimum=1, none_ok=True)
        if gen_length is not None and gen_length % block_length:
            raise ValueError(
                f"`block_length` ({block_length}) must divide `gen_length` ({gen_length}): pass a divisor of "
                f"{gen_length}, or None for one block."
            )
        if gen_length is not None and num_inference_steps is not None:
            num_blocks = gen_length // block_length
            if num_inference_steps % num_blocks:
                raise ValueError(
                    f"`num_inference_steps` ({num_inference_steps}) must be divisible by the number of blocks "
                    f"(`gen_length / block_length` = {num_blocks}): pass a multiple of {num_blocks}, or a larger "
                    "`block_length`."
                )
    if threshold is not None:
        check_number("threshold", threshold, low=0.0, high=1.0, low_open=True, none_ok=True)
        if confidence in ("origin", "random"):
            raise ValueError(
                f"`threshold` needs a confidence that measures the model's certainty, not `confidence={confidence!r}`:"
                " use 'maskgit_plus', 'entropy', 'topk_margin' or 'anchor', or drop `threshold`."
            )
    check_integer("minimal_topk", minimal_topk, minimum=1)


def _anchor_distance(masked: torch.BoolTensor) -> torch.LongTensor:
    """`(N, L)`: each position's distance to the nearest position that is not masked (the prompt, before position 0,
    always counts)."""
    positions = torch.arange(masked.shape[1], device=masked.device).expand_as(masked)
    big = masked.shape[1] + 1
    left = torch.where(~masked, positions, -big).cummax(-1).values
    right = torch.where(~masked, positions, 2 * big).flip(-1).cummin(-1).values.flip(-1)
    return torch.minimum(positions - left.clamp(min=-1), right - positions)


def _check_step_inputs(model_output, sample, mask_token_id, temperature, top_p, top_k) -> None:
    """Refuses arguments of `step` that would fail deep inside sampling, naming the argument and the fix."""
    if not torch.is_tensor(model_output) or model_output.dim() != 3:
        raise ValueError("`model_output` must be logits of shape `(batch_size, gen_length, vocab_size)`.")
    if not torch.is_tensor(sample) or tuple(sample.shape) != tuple(model_output.shape[:2]):
        shape = tuple(sample.shape) if torch.is_tensor(sample) else type(sample).__name__
        raise ValueError(
            f"`sample` must be the response tokens `(batch_size, gen_length)` = {tuple(model_output.shape[:2])} "
            f"matching `model_output`, got {shape}."
        )
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, numbers.Integral):
        raise TypeError(f"`mask_token_id` must be an integer token id, got {mask_token_id!r}.")
    if not 0 <= mask_token_id < model_output.shape[-1]:
        raise ValueError(
            f"`mask_token_id` must be a token id in [0, {model_output.shape[-1]}) (the logits' width), got "
            f"{mask_token_id}."
        )
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 <= temperature < math.inf:
        raise ValueError(f"`temperature` must be a finite number >= 0 (0 is greedy), got {temperature!r}.")
    if top_p is not None and not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise ValueError(f"`top_p` must be in (0, 1] or None, got {top_p!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k <= 0):
        raise ValueError(f"`top_k` must be a positive integer or None, got {top_k!r}.")
