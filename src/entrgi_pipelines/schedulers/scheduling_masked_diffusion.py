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
        invalid_rows (`torch.LongTensor`, 0-dim):
            How many candidate rows of `model_output` had no valid distribution (NaN, +inf, or `-inf` everywhere):
            nonzero only when `step` got `masked_positions` (it raises otherwise), for the caller to check.
    """

    prev_sample: torch.LongTensor
    sampled_tokens: torch.LongTensor
    commit_mask: torch.BoolTensor
    confidence: torch.Tensor
    invalid_rows: torch.LongTensor | None = None


# The exact nucleus works in chunks of rows, so that its int64 temporaries (the sort's indices, the histogram keys)
# never span all `(P, V)` rows at once: at most this many entries per chunk (128 MB of int64 for the sort). On CPU
# the histogram's chunks are smaller: glibc serves blocks under its mmap threshold (up to 32 MB) from memory it
# keeps, so the temporaries of one chunk reuse the last one's pages instead of faulting in new ones (50 ms against
# 76 ms for an Adam step's vocabulary work at P = 144, V = 30,000 on one thread).
_CHUNK_ELEMENTS = 1 << 24
_CPU_CHUNK_ELEMENTS = 1 << 20
# On CPU the boundary is found by a two-level histogram of log-probabilities (a radix select: 4096 bins of 40 / 4095
# nats, then 4096 sub-bins of the boundary bin, finer than float32 resolves a log-probability), 5-8x faster than a
# sort of the vocabulary there (0.15 s against 0.77 s for 64 rows of V = 152,064, one thread; benchmarks/README.md).
_BINS, _SPAN, _TAIL_BINS, _SUB_BINS = 4096, 40.0, 64, 4096
_BINS_PER_NAT = (_BINS - 1) / _SPAN


def nucleus_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`(..., 1)`: per row of `probs`, the smallest probability inside its top-p nucleus, by a sort of the row.

    The nucleus (as in Holtzman et al. and transformers' `TopPLogitsWarper`) keeps, in decreasing order of
    probability, every token whose more probable tokens hold less than `top_p` of the mass, so the most likely token
    always survives; it is `probs >= threshold` (tokens tied with the last one kept are kept too). A row with a NaN
    gets a NaN threshold (nothing passes `>=` it). No host sync.
    """
    vocab_size = probs.shape[-1]
    flat = probs.reshape(-1, vocab_size)
    threshold = flat.new_empty(flat.shape[0], 1)
    chunk = max(1, _CHUNK_ELEMENTS // vocab_size)
    for start in range(0, flat.shape[0], chunk):
        values = flat[start : start + chunk].sort(-1, descending=True).values
        # token j is kept iff the mass before it, cumsum[j - 1], is below top_p: a prefix of the sorted row
        count = (values.cumsum(-1) < top_p).sum(-1, keepdim=True).add_(1).clamp_(max=vocab_size)
        threshold[start : start + chunk] = values.gather(-1, count - 1)
    return threshold.reshape(*probs.shape[:-1], 1)


def _histogram_nucleus(probs: torch.Tensor, top_p: float):
    """Yields `(rows, mask)` for chunks of rows of 2-D `probs`: the nucleus mask of `nucleus_mask` for `probs[rows]`,
    by a two-level histogram (a radix select) instead of a sort.

    Level 1: each token's bin `floor(-log p * 4095 / 40)` (tokens less probable than `(1 - top_p) / V`, never in the
    nucleus, go to trailing bins by column: a scatter-add into one bin is a chain of dependent writes); the boundary
    bin is the one where the cumulative mass reaches `top_p`. Level 2 splits the boundary bin into 4096 sub-bins the
    same way. Bins before the boundary are in, bins after out, so the nucleus is exact to float32 resolution: tokens
    within a few float steps of the last one kept count as ties, and the mass is summed per bin rather than in
    sorted order (so the boundary can move by a token where the two roundings differ).
    """
    vocab_size = probs.shape[-1]
    span = min(_SPAN, math.log(vocab_size / (1.0 - top_p)))
    bins = min(_BINS, math.ceil(span * _BINS_PER_NAT) + 1)
    tail = torch.arange(vocab_size, device=probs.device, dtype=probs.dtype).remainder_(_TAIL_BINS).add_(bins - 1)
    chunk = max(1, _CPU_CHUNK_ELEMENTS // vocab_size)
    for start in range(0, probs.shape[0], chunk):
        rows = slice(start, start + chunk)
        p = probs[rows]
        position = p.log().mul_(-_BINS_PER_NAT)  # >= 0; +inf for impossible tokens, NaN stays NaN
        coarse = torch.minimum(position, tail).nan_to_num_(nan=bins - 1.0)  # a NaN joins the tail, in range
        key = coarse.long()
        mass = p.new_zeros(p.shape[0], bins - 1 + _TAIL_BINS).scatter_add_(-1, key, p)
        cumulative = mass.cumsum(-1)
        boundary = (cumulative < top_p).sum(-1, keepdim=True).clamp_(max=mass.shape[-1] - 1)
        before = (cumulative - mass).gather(-1, boundary)
        in_boundary = key == boundary
        fine = position.sub_(boundary).mul_(_SUB_BINS).clamp_(0, _SUB_BINS - 1).nan_to_num_(nan=_SUB_BINS - 1)
        key.copy_(fine).masked_fill_(~in_boundary, _SUB_BINS)  # the rest of the row: one extra bin, unused
        sub_mass = p.new_zeros(p.shape[0], _SUB_BINS + 1).scatter_add_(-1, key, p)
        sub_boundary = (sub_mass.cumsum_(-1).add_(before) < top_p).sum(-1, keepdim=True)
        yield rows, (coarse < boundary) | (in_boundary & (key <= sub_boundary))


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.BoolTensor:
    """Mask of the tokens inside the top-p nucleus of each row of `probs` (see `nucleus_threshold`); a NaN row has
    none. Exact: by a sort on accelerators, by the equivalent two-level histogram on CPU (faster there; the two agree
    but for float rounding at the boundary). No host sync."""
    if probs.device.type == "cpu":
        flat = probs.reshape(-1, probs.shape[-1])
        keep = torch.empty(flat.shape, dtype=torch.bool)
        for rows, mask in _histogram_nucleus(flat, top_p):
            keep[rows] = mask
        return keep.reshape(probs.shape)
    return probs >= nucleus_threshold(probs, top_p)


def _nucleus(log_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask of the tokens outside the top-p nucleus, from log-probabilities (see `filter_logits`); a NaN row is
    outside everywhere."""
    return ~nucleus_mask(log_probs.exp(), top_p)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Sets logits outside the top-k and outside the top-p nucleus to `-inf` (rows are independent).

    The nucleus keeps every token whose more probable tokens hold less than `top_p` of the mass, so the most likely
    token always survives (exactly: see `nucleus_mask`).
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = logits.masked_fill(_nucleus(logits.float().log_softmax(-1), top_p), float("-inf"))
    return logits


def entropy_(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of `log_probs` (natural log), computed in place: `log_probs` is overwritten.

    One temporary instead of four (every `(P, V)` temporary is memory, and on CPU page faults). `0 * log 0` counts as
    0; a NaN stays NaN.
    """
    probs = log_probs.exp()
    return -probs.mul_(log_probs.clamp_(min=torch.finfo(log_probs.dtype).min)).sum(-1)


def device_generator(generator: torch.Generator | None, device: torch.device | str) -> torch.Generator | None:
    """A generator that draws on `device`: `generator` itself where it already is there (or None: the device's
    default generator), else a new one on `device` seeded by one draw from `generator`.

    So a CPU generator (what most examples pass) drives a CUDA call without a host-to-device copy per draw, and the
    same seed still gives the same output; on CPU nothing changes.
    """
    device = torch.device(device)
    if generator is None or generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (), generator=generator))  # on the caller's device: no sync of `device`
    return torch.Generator(device).manual_seed(seed)


def _uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.rand(*shape, generator=generator, device=source).to(device)


def _invert_cdf(cdf: torch.Tensor, generator: torch.Generator | None) -> torch.LongTensor:
    """The index where one uniform number per row, scaled by the row's total mass, falls in the row's CDF."""
    uniform = _uniform((*cdf.shape[:-1], 1), generator, cdf.device)
    tokens = torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True)
    # float rounding can put the scaled number at the very end of the CDF (and a NaN row past it)
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
    return sample_from_probs(logits.float().log_softmax(-1).exp(), top_p, generator)


def sample_from_probs(probs: torch.Tensor, top_p: float | None = None, generator=None) -> torch.LongTensor:
    """One sample per row from `probs` restricted to its top-p nucleus (the same draws as `sample_tokens` on the
    logits): for callers that already hold the probabilities, so that no vocabulary pass is repeated. `probs` is not
    modified."""
    return _invert_cdf(nucleus_cdf(probs, top_p), generator)


def nucleus_cdf(probs: torch.Tensor, top_p: float | None = None) -> torch.Tensor:
    """The cumulative sum of `probs` over its top-p nucleus (zero mass outside it), a new tensor; its last entry is
    the nucleus' mass. Random-free, so that it can be compiled; `_invert_cdf` draws from it."""
    if top_p is None or top_p >= 1.0:
        return probs.cumsum(-1)
    if probs.device.type == "cpu":  # chunk by chunk: no (P, V) mask, and the chunks' temporaries reuse memory
        flat = probs.reshape(-1, probs.shape[-1])
        cdf = torch.empty_like(flat)
        for rows, mask in _histogram_nucleus(flat, top_p):
            torch.where(mask, flat[rows], flat.new_zeros(()), out=cdf[rows]).cumsum_(-1)
        return cdf.reshape(probs.shape)
    return torch.where(nucleus_mask(probs, top_p), probs, 0.0).cumsum_(-1)


SCHEDULER_KV_CACHE_MODES = ("auto", "prefix", "dual", None)


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
        kv_cache (`str`, *optional*, defaults to `"auto"`): the dLLM's key/value cache for the pipeline's calls that
            leave `kv_cache="auto"`: `"auto"` (the exact cache of a block-diffusion model, none for a full-attention
            one), `"prefix"` or `"dual"` (Fast-dLLM's approximate caches), or None (no cache). Kept in the
            scheduler's config, so that `save_pretrained` and the Hub keep a pipeline's cache choice with its other
            decoding settings; a call's explicit `kv_cache=` wins.

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
        kv_cache: str | None = "auto",
    ):
        if kv_cache not in SCHEDULER_KV_CACHE_MODES:
            raise ValueError(
                f"`kv_cache` must be one of {SCHEDULER_KV_CACHE_MODES[:-1]} or None (no cache), got {kv_cache!r}."
            )
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
        # The per-step fractions as Python floats, so that a step reads no tensor: `"time"` / `origin` on the
        # float64 grid, `"time_floor"` on Dream's float32 grid (its float32 product is redone on the device).
        self._fractions = (1.0 - self.sigmas[1:] / self.sigmas[:-1]).tolist()
        grid = torch.linspace(1.0, self.config.eps, self.steps_per_block + 1)
        self._floor_fractions = (1 - grid[1:] / grid[:-1]).tolist()
        self._tables: dict[tuple[str, str], torch.Tensor] = {}
        self._step_index = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Starts the next `step` at this index of `timesteps` (diffusers' convention), so that the first step does
        not look its timestep up (reading a device tensor back to the host)."""
        self._step_index = begin_index

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

    def _unmask_fractions(self, step_index: int | torch.LongTensor, device) -> float | torch.Tensor:
        """`unmask_fraction`, per row for a tensor of step indices (`(N, 1)`, to broadcast over positions)."""
        if not torch.is_tensor(step_index):
            return self.unmask_fraction(step_index)
        step = step_index % self.steps_per_block
        fractions = self._fraction_table("origin", device)
        return fractions[torch.where(step >= self.steps_per_block - 1, self.steps_per_block, step)][:, None]

    def _fraction_table(self, kind: str, device) -> torch.Tensor:
        """The per-step fractions as a tensor on `device`, built once per `set_timesteps` (per-row schedules gather
        from it every step: no host-to-device copy per step)."""
        key = (kind, str(device))
        if key not in self._tables:
            values, dtype = {
                "time": (self._fractions, torch.float64),
                "floor": (self._floor_fractions, torch.float32),
                "origin": (self._fractions + [1.0], torch.float32),
            }[kind]
            self._tables[key] = torch.tensor(values, dtype=dtype, device=device)
        return self._tables[key]

    def unmask_fraction(self, step_index: int) -> float:
        """`1 - t_{i+1} / t_i` within the block: the expected fraction of its masked positions committed at step
        `step_index` (1 at the block's last step)."""
        step = step_index % self.steps_per_block
        if step >= self.steps_per_block - 1:
            return 1.0
        return self._fractions[step]

    def num_tokens_to_commit(
        self, num_masked: torch.LongTensor, step_index: int | torch.LongTensor
    ) -> torch.LongTensor:
        """How many of the block's `num_masked` positions (per row) to commit at step `step_index` (one index, or
        each row's: see `step(row_steps=...)`), by the commit schedule; all of them at the block's last step."""
        if torch.is_tensor(step_index):
            return self._rows_to_commit(num_masked, step_index)
        step = step_index % self.steps_per_block
        if step >= self.steps_per_block - 1:
            return num_masked
        schedule = self.config.commit_schedule
        if schedule == "even":
            steps_left = self.steps_per_block - step
            return torch.div(num_masked + steps_left - 1, steps_left, rounding_mode="floor")
        if schedule == "time_floor":
            # Dream's arithmetic: a float32 grid and a float32 product (a float32 scalar), truncated
            return (num_masked.float() * self._floor_fractions[step]).long().clamp(max=num_masked)
        return torch.round(num_masked * self.unmask_fraction(step_index)).long().clamp(max=num_masked)

    def _rows_to_commit(self, num_masked: torch.LongTensor, row_steps: torch.LongTensor) -> torch.LongTensor:
        """`num_tokens_to_commit` with every row at its own step (the same arithmetic, gathered per row)."""
        step = row_steps % self.steps_per_block
        last = step >= self.steps_per_block - 1
        schedule = self.config.commit_schedule
        if schedule == "even":
            steps_left = self.steps_per_block - step
            k = torch.div(num_masked + steps_left - 1, steps_left, rounding_mode="floor")
        elif schedule == "time_floor":
            fraction = self._fraction_table("floor", num_masked.device)[step]
            k = (num_masked.float() * fraction).long().clamp(max=num_masked)
        else:
            fraction = self._fraction_table("time", num_masked.device)[step]
            k = torch.round(num_masked * fraction).long().clamp(max=num_masked)
        return torch.where(last, num_masked, k)

    def _confidence(
        self,
        logits: torch.Tensor,
        tokens: torch.LongTensor,
        positions: tuple[torch.LongTensor, torch.LongTensor],
        masked: torch.BoolTensor,
        generator,
    ) -> torch.Tensor:
        """Confidence of each candidate position (rows of `logits` are the candidates at `positions`, in order;
        `masked` marks every masked position of the response, later blocks included)."""
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
        return token_prob - _anchor_distance(masked)[positions].to(token_prob.dtype)

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
        masked_positions: tuple[torch.LongTensor, torch.LongTensor] | None = None,
        row_steps: torch.LongTensor | None = None,
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
            confidence_logits (`torch.Tensor`, *optional*): logits the confidence is computed from (see the class
                doc), either `(batch_size, gen_length, vocab_size)` or `(P, vocab_size)`, the rows at
                `masked_positions`.
            temperature (`float`, defaults to 1.0): sampling temperature (>= 0; 0 is greedy); confidences use it too.
            top_p (`float`, *optional*): nucleus sampling mass in (0, 1].
            top_k (`int`, *optional*): sample among the `top_k` most likely tokens.
            eos_token_id (`int`, *optional*): end-of-sequence id, committed last when `eos_last=True`.
            threshold (`float`, *optional*): overrides the config's `threshold` for this step.
            minimal_topk (`int`, *optional*): overrides the config's `minimal_topk` for this step.
            generator (`torch.Generator`, *optional*): makes the sampling reproducible (on the logits' device: see
                [`device_generator`]).
            masked_positions (`tuple[torch.LongTensor, torch.LongTensor]`, *optional*): `(rows, columns)` of this
                step's candidates, [`~MaskedDiffusionScheduler.masked_positions`] computed by the caller (the
                step's one host sync, shared with guidance). Given, the step makes no host sync (with one block and
                no threshold) and reports rows without a valid distribution in `invalid_rows` instead of raising.
            row_steps (`torch.LongTensor` of shape `(batch_size,)`, *optional*): every row at its own step (an
                index into `timesteps`: its block and its step in it), so that rows advance on their own (the
                pipeline's threshold decoding). The step then neither reads `timestep` nor moves `step_index`;
                the caller moves each row (a row whose block is full to its next block's first step).
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
        if row_steps is not None:
            step_index = row_steps
            last_of_block = row_steps % self.steps_per_block == self.steps_per_block - 1
        else:
            if self._step_index is None:
                self._step_index = self.index_for_timestep(timestep)
            step_index = self._step_index
            last_of_block = step_index % self.steps_per_block == self.steps_per_block - 1

        all_masked = sample == mask_token_id
        masked = self.candidates(sample, mask_token_id, step_index)
        eager_check = masked_positions is None
        if eager_check:
            masked_positions = masked.nonzero(as_tuple=True)  # a host sync: it sizes the rows
        rows, columns = masked_positions
        # Vocabulary-wide work touches masked rows only, gathered by index. The mask token is never a candidate.
        # (the gather copies: dividing that copy in place saves a (P, V) tensor)
        greedy = temperature == 0
        logits = model_output[rows, columns].float()
        if not greedy:
            logits.div_(temperature)
        logits[:, mask_token_id] = float("-inf")
        # A row without a distribution (NaN, +inf, or nothing but -inf) cannot be sampled: refused here when this step
        # found its rows itself (one more sync), else counted in `invalid_rows` for the caller to check lazily (the
        # sampler still returns in-range tokens for such rows).
        invalid = (~logits.amax(-1).isfinite()).sum()
        if eager_check and logits.numel() and int(invalid):
            raise ValueError(
                f"`model_output` has no valid distribution at {int(invalid)} masked position(s) at step "
                f"{step_index} (NaN, +inf, or -inf everywhere but the mask token): check the model and the callbacks "
                "that edit the logits."
            )
        if greedy:
            tokens = logits.argmax(-1)
        else:
            tokens = sample_tokens(logits, top_k=top_k, top_p=top_p, generator=generator)
        if confidence_logits is None:
            source = logits
        elif confidence_logits.dim() == 2:  # already the rows at `masked_positions` (the caller's: not in place)
            source = confidence_logits.float() if greedy else confidence_logits.float() / temperature
        else:
            source = confidence_logits[rows, columns].float()
            if not greedy:
                source.div_(temperature)
        row_confidence = self._confidence(source, tokens, masked_positions, all_masked, generator)

        sampled = sample.index_put(masked_positions, tokens)
        confidence = torch.full(sample.shape, float("-inf"), device=sample.device)
        confidence = confidence.index_put_(masked_positions, row_confidence.to(confidence.dtype))
        if self.config.confidence == "origin":
            fraction = self._unmask_fractions(step_index, sample.device)
            commit = masked & (confidence < fraction)
        else:
            num_masked = masked.sum(-1)
            if threshold is not None:
                above = (self._threshold_scale(confidence, all_masked) >= threshold) & masked
                k = torch.minimum(above.sum(-1).clamp(min=minimal_topk), num_masked)
                if torch.is_tensor(last_of_block):
                    k = torch.where(last_of_block, num_masked, k)
                elif last_of_block:
                    k = num_masked
            elif last_of_block is True:
                k = num_masked
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
        if row_steps is not None:  # the caller moves the rows
            return (
                MaskedDiffusionSchedulerOutput(prev_sample, sampled, commit, confidence, invalid)
                if return_dict
                else (prev_sample, sampled, commit, confidence)
            )
        self._step_index += 1
        if not last_of_block and self._blockwise | (threshold is not None):
            # a block full in every row ends early (one host sync): its remaining budgeted steps are skipped
            if not bool((masked & ~commit).any()):
                block = step_index // self.steps_per_block
                self._step_index = (block + 1) * self.steps_per_block

        if not return_dict:
            return prev_sample, sampled, commit, confidence
        return MaskedDiffusionSchedulerOutput(
            prev_sample=prev_sample,
            sampled_tokens=sampled,
            commit_mask=commit,
            confidence=confidence,
            invalid_rows=invalid,
        )

    def candidates(
        self, sample: torch.LongTensor, mask_token_id: int, step_index: int | torch.LongTensor | None = None
    ):
        """`(N, L)` bool: the positions step `step_index` (default: the next step; a tensor: each row's) may commit,
        the masked positions of its block."""
        masked = sample == mask_token_id
        if not self._blockwise:
            return masked
        step_index = (self._step_index or 0) if step_index is None else step_index
        if torch.is_tensor(step_index):
            start = step_index // self.steps_per_block * self.block_length
            columns = torch.arange(sample.shape[1], device=sample.device)
            return masked & (columns >= start[:, None]) & (columns < start[:, None] + self.block_length)
        start, end = self.block_bounds(step_index)
        in_block = torch.zeros(sample.shape[1], dtype=torch.bool, device=sample.device)
        in_block[start:end] = True
        return masked & in_block

    def masked_positions(
        self, sample: torch.LongTensor, mask_token_id: int, row_steps: torch.LongTensor | None = None
    ) -> tuple[torch.LongTensor, ...]:
        """`(rows, columns)` of the next step's [`~MaskedDiffusionScheduler.candidates`] (with `row_steps`, each
        row's), row-major: one host sync (`nonzero` sizes them), which a caller can share between guidance and
        `step(masked_positions=...)`."""
        return self.candidates(sample, mask_token_id, row_steps).nonzero(as_tuple=True)

    def block_causal_rules(self) -> MaskedDiffusionScheduler:
        """The scheduler a block-causal model (SDAR, Fast-dLLM v2) decodes with: this one when its confidence or
        commit schedule was chosen, else a copy with the block-diffusion references' rules (the sampled token's
        probability as confidence, the even schedule). Threshold and the rest are kept."""
        config = dict(self.config)
        if config["confidence"] != "entropy" or config["commit_schedule"] != "time":
            return self
        config.update(confidence="maskgit_plus", commit_schedule="even")
        config.pop("_use_default_values", None)  # else `from_config` puts the defaults back for these two
        return type(self).from_config(config)

    def step_rows(
        self,
        model_output: torch.Tensor,
        sample: torch.LongTensor,
        *,
        step_in_block: torch.LongTensor,
        masked_at_start: torch.LongTensor,
        mask_token_id: int,
        confidence_logits: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_p: float | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> MaskedDiffusionSchedulerOutput | tuple:
        """
        One step of block-causal decoding, every row in its own block: samples the block's masked positions and
        commits the most confident ones.

        Row `r` is at step `step_in_block[r]` of its block's `steps_per_block` (set by `set_timesteps`), and its
        block had `masked_at_start[r]` masked positions when it began. Its count follows the block-diffusion
        references (SDAR's `low_confidence_static`): the masked count split evenly over the block's steps, the
        remainder to the first steps, never more than the positions still masked (so a block that holds the
        prompt's tail never overwrites it), everything left at the block's last step. With `threshold`
        (SDAR's `low_confidence_dynamic`) a step commits every candidate whose confidence is above the threshold
        when they are at least the scheduled count, else the scheduled count. At `temperature=0` the argmax is
        taken, with the untempered probability as confidence. The mask token is never a candidate.

        Args:
            model_output (`torch.Tensor` of shape `(N, block, vocab_size)`): each row's logits for its block.
            sample (`torch.LongTensor` of shape `(N, block)`): each row's block tokens.
            step_in_block (`torch.LongTensor` of shape `(N,)`): each row's step within its block (from 0).
            masked_at_start (`torch.LongTensor` of shape `(N,)`): each row's masked count at its block's start.
            mask_token_id (`int`): the mask id.
            confidence_logits (`torch.Tensor`, *optional*): logits the confidence is computed from (the unguided
                ones under guidance), else `model_output`.
            temperature (`float`, defaults to 1.0): sampling temperature (>= 0; 0 is greedy).
            top_p (`float`, *optional*): nucleus sampling mass in (0, 1].
            top_k (`int`, *optional*): sample among the `top_k` most likely tokens.
            generator (`torch.Generator`, *optional*): makes the sampling reproducible.
            threshold (`float`, *optional*): overrides the config's `threshold`.
            return_dict (`bool`, defaults to `True`): a [`MaskedDiffusionSchedulerOutput`] or a tuple.
        """
        if self.steps_per_block is None:
            raise ValueError("Call `set_timesteps` before `step_rows`.")
        _check_step_inputs(model_output, sample, mask_token_id, temperature, top_p, top_k)
        threshold = self.config.threshold if threshold is None else threshold
        check_decoding_arguments(threshold=threshold, confidence=self.config.confidence)
        masked = sample == mask_token_id
        greedy = temperature == 0
        logits = model_output.float()
        if not greedy:
            logits = logits / temperature
        logits[..., mask_token_id] = float("-inf")
        if greedy:
            tokens = logits.argmax(-1)
        else:
            flat = logits.reshape(-1, logits.shape[-1])
            tokens = sample_tokens(flat, top_k=top_k, top_p=top_p, generator=generator).reshape(sample.shape)
        source = logits if confidence_logits is None else confidence_logits.float()
        if confidence_logits is not None:
            if not greedy:
                source = source / temperature
            source[..., mask_token_id] = float("-inf")
        flat_source = source.reshape(-1, source.shape[-1])
        every = torch.ones_like(masked)  # all positions are rows of `flat_source` (a block is a few tokens)
        confidence = self._confidence(flat_source, tokens.reshape(-1), every, masked, generator).reshape(sample.shape)
        confidence = torch.where(masked, confidence.float(), float("-inf"))
        sampled = torch.where(masked, tokens, sample)

        steps = self.steps_per_block
        num_masked = masked.sum(-1)
        base, remainder = masked_at_start // steps, masked_at_start % steps
        k = torch.minimum(base + (step_in_block < remainder).long(), num_masked)
        k = torch.where(step_in_block >= steps - 1, num_masked, k)
        if threshold is not None:
            above = (self._threshold_scale(confidence, masked) > threshold) & masked
            k = torch.where(above.sum(-1) >= k, above.sum(-1), k)
        ranks = confidence.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
        commit = masked & (ranks < k[:, None])
        prev_sample = torch.where(commit, sampled, sample)
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
