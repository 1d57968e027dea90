"""Sequential Monte Carlo over the K samples of each prompt: importance weights from a reward potential, the effective
sample size, and systematic resampling (the pipeline's `resample="smc"`; see docs/methods.md).

Each prompt's K samples are particles. At a check, sample `k` of a prompt weighs
`w_k = exp((r_k(now) - r_k(before)) / temperature)`, where `r` is the potential (a reward) and `before` is the last
time the prompt resampled (the start of the call, where every sample is all masks and a common `r = 0` cancels):
the increments multiply up, so `w_k` is the sample's weight accumulated since then. When the effective sample size
`(sum w)^2 / sum w^2` falls below `ess_threshold * K`, K indices are drawn by systematic resampling and the chosen
samples are copied (their weights reset to 1). A potential that is not finite (NaN, inf) gives its sample weight
zero until the prompt next resamples, so no sample is ever copied from it; a prompt whose samples all have weight
zero does not resample.
"""

from __future__ import annotations

import logging

import torch

from ..validation import check_choice, check_integer, check_number

logger = logging.getLogger(__name__)

RESAMPLE_METHODS = ("none", "smc")
POTENTIALS = ("hard", "guidance")


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """`(sum w)^2 / sum w^2` per row of `log_weights` `(B, K)` (`-inf`: weight zero), from 1 (one sample holds all
    the weight) to K (equal weights); 0 for a row whose weights are all zero.

    Example:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.guidance.resampling import effective_sample_size
        >>> effective_sample_size(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -float("inf"), -float("inf"), 0.0]]))
        tensor([4., 2.], dtype=torch.float64)
        ```
    """
    log_weights = log_weights.double()
    top = log_weights.amax(-1, keepdim=True)
    weights = (log_weights - torch.where(top.isfinite(), top, 0.0)).exp()  # scaled so the largest is 1
    total = weights.sum(-1)
    return torch.where(total > 0, total.square() / weights.square().sum(-1).clamp(min=1e-300), 0.0)


def systematic_resample(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.LongTensor:
    """K indices per row of `weights` `(B, K)` (non-negative, each row with a positive sum) by systematic resampling.

    The K points `(u + k) / K`, `k = 0 .. K-1`, with one uniform `u` in [0, 1) per row (`uniforms`, `(B,)`), are read
    in the row's normalised cumulative weights: sample `i`, of normalised weight `W_i`, is drawn `floor(K W_i)` or
    `ceil(K W_i)` times, `K W_i` times on average over `u`, and never when its weight is zero. The indices come out in
    increasing order; equal weights give `0, 1, ..., K-1` whatever `u`.

    Example:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.guidance.resampling import systematic_resample
        >>> systematic_resample(torch.tensor([[0.1, 0.6, 0.0, 0.3]]), torch.tensor([0.5]))
        tensor([[1, 1, 1, 3]])
        ```
    """
    num_samples = weights.shape[-1]
    cdf = weights.double().cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    steps = torch.arange(num_samples, device=weights.device, dtype=torch.float64)
    points = (uniforms.to(weights.device, torch.float64)[:, None] + steps) / num_samples
    return torch.searchsorted(cdf, points, right=True).clamp_(max=num_samples - 1)


def check_resampling_arguments(
    resample: str, resample_every, resample_ess, resample_temperature, potential: str, num_samples_per_prompt
) -> None:
    """Refuses resampling settings that cannot work, naming the argument and the fix."""
    check_choice("resample", resample, RESAMPLE_METHODS)
    check_choice("potential", potential, POTENTIALS)
    check_integer("resample_every", resample_every, minimum=1)
    check_number("resample_ess", resample_ess, low=0.0, high=1.0, low_open=True)
    check_number("resample_temperature", resample_temperature, low=0.0, low_open=True)
    if resample == "smc" and num_samples_per_prompt == 1:
        raise ValueError(
            "`resample='smc'` resamples among the samples of a prompt: pass `num_samples_per_prompt` >= 2, or "
            "`resample='none'`."
        )


class ParticleResampler:
    """
    The SMC state of one pipeline call: each sample's potential at its prompt's last resampling, which samples have
    weight zero, the ancestry, and the record of every check.

    Args:
        num_prompts (`int`): `B`.
        num_samples (`int`): `K` samples (particles) per prompt, rows `b * K + k`.
        ess_threshold (`float`): resample a prompt when its effective sample size is below `ess_threshold * K`.
        temperature (`float`): the potential's temperature (weights `exp(delta r / temperature)`).
        generator (`torch.Generator`, *optional*): draws the one uniform per prompt of systematic resampling (only at
            checks where some prompt resamples, so a call that never resamples draws as one without SMC).
        device: where the weights live (the samples' device).

    Example:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.guidance.resampling import ParticleResampler
        >>> resampler = ParticleResampler(1, 4, ess_threshold=0.5, temperature=0.1)
        >>> resampler.check(torch.tensor([0.0, 2.0, 0.0, 0.0]), step=1)  # one sample far ahead: all copy it
        tensor([1, 1, 1, 1])
        >>> resampler.ancestry.tolist(), resampler.resampled
        ([[1, 1, 1, 1]], [[True]])
        ```
    """

    def __init__(
        self,
        num_prompts: int,
        num_samples: int,
        *,
        ess_threshold: float,
        temperature: float,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        self.num_prompts, self.num_samples = num_prompts, num_samples
        self.ess_threshold, self.temperature, self.generator = float(ess_threshold), float(temperature), generator
        rows = num_prompts * num_samples
        self.device = torch.device(device)
        self.before = torch.zeros(rows, dtype=torch.float64, device=self.device)
        self.dead = torch.zeros(rows, dtype=torch.bool, device=self.device)
        self._ancestry = torch.arange(num_samples, device=self.device).repeat(num_prompts)
        self.steps: list[int] = []
        self._ess: list[torch.Tensor] = []
        self._resampled: list[torch.Tensor] = []
        self._nonfinite = torch.zeros(2, dtype=torch.long, device=self.device)  # (sample rows, prompts without weight)

    @property
    def ancestry(self) -> torch.LongTensor:
        """`(B, K)`: the sample (0 .. K-1) of its prompt that each current sample descends from."""
        return self._ancestry.reshape(self.num_prompts, self.num_samples).cpu()

    @property
    def ess(self) -> torch.Tensor:
        """`(checks, B)`: each prompt's effective sample size at each check, before resampling."""
        if not self._ess:
            return torch.zeros(0, self.num_prompts)
        return torch.stack(self._ess).float().cpu()

    @property
    def resampled(self) -> list[list[bool]]:
        """`checks x B`: whether each prompt resampled at each check."""
        return torch.stack(self._resampled).cpu().tolist() if self._resampled else []

    def check(self, potential: torch.Tensor, step: int) -> torch.LongTensor | None:
        """Weighs the samples by the change of `potential` `(B * K,)` since their prompt's last resampling, and
        resamples the prompts whose effective sample size is below the threshold.

        Returns the row each sample is copied from (`(B * K,)`, within its prompt; the identity for prompts that did
        not resample), or `None` when no prompt resampled. One host sync.
        """
        potential = potential.detach().to(self.device, torch.float64).reshape(-1)
        finite = potential.isfinite()
        self._nonfinite[0] += (~finite).sum()
        self.dead |= ~finite
        log_weights = ((potential - self.before) / self.temperature).masked_fill(self.dead, float("-inf"))
        # (an increment too large for float64 stays the largest weight rather than becoming inf, then NaN)
        log_weights = log_weights.clamp(max=torch.finfo(torch.float64).max).reshape(self.num_prompts, -1)
        alive = log_weights.isfinite().any(-1)
        self._nonfinite[1] += (~alive).sum()
        ess = effective_sample_size(log_weights)
        resample = alive & (ess < self.ess_threshold * self.num_samples)
        self.steps.append(step)
        self._ess.append(ess)
        self._resampled.append(resample)
        if not bool(resample.any()):
            return None
        source = self.generator.device if self.generator is not None else self.device
        uniforms = torch.rand(self.num_prompts, generator=self.generator, device=source).to(self.device)
        weights = torch.where(resample[:, None], log_weights.softmax(-1), 1.0)  # rows kept as they are: any weights
        identity = torch.arange(self.num_samples, device=self.device)
        chosen = torch.where(resample[:, None], systematic_resample(weights, uniforms), identity)
        index = (chosen + self.num_samples * torch.arange(self.num_prompts, device=self.device)[:, None]).reshape(-1)
        copied = resample.repeat_interleave(self.num_samples)
        self.before = torch.where(copied, potential[index], self.before)
        self.dead = torch.where(copied, False, self.dead)  # a copied sample had weight > 0
        self._ancestry = self._ancestry[index]
        return index

    def warn_nonfinite(self) -> None:
        """Warns once (per call) when a potential was not finite: those samples weighed zero, and prompts with no
        sample of positive weight were not resampled at that check."""
        rows, prompts = self._nonfinite.tolist()
        if rows:
            logger.warning(
                "SMC resampling: the potential was not finite (NaN or inf) for %d sample rows over %d checks; those "
                "samples weighed zero (never copied). At %d (check, prompt) pairs no sample of the prompt had a "
                "finite weight, so that prompt was not resampled there.",
                rows,
                len(self.steps),
                prompts,
            )
