"""The shared-pass sampling helpers of the scheduler: same draws and values as the plain definitions."""

import math

import torch

from entrgi_pipelines.schedulers.scheduling_masked_diffusion import (
    Workspace,
    _nucleus,
    entropy_,
    nucleus_cdf,
    sample_from_log_probs,
    sample_tokens,
)


def logits(seed=0, rows=48, vocab=500):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(rows, vocab, generator=g) * torch.rand(rows, 1, generator=g) * 10
    out[:, 7] = float("-inf")  # a blocked token
    return out


def test_entropy_in_place_is_the_entropy_with_zero_for_impossible_tokens():
    x = logits()
    p = x.softmax(-1)
    reference = -torch.where(p > 0, p * p.log(), torch.zeros(())).sum(-1)
    assert torch.allclose(entropy_(x.log_softmax(-1)), reference, atol=1e-5)
    uniform = torch.zeros(2, 16).log_softmax(-1)
    assert torch.allclose(entropy_(uniform), torch.full((2,), math.log(16)))
    assert entropy_(torch.tensor([[float("nan"), 0.0]])).isnan().all()  # a NaN is not hidden


def test_sampling_from_shared_log_probs_draws_as_sample_tokens():
    x = logits(1)
    for top_p in (None, 0.5, 0.9, 0.999):
        log_probs = x.log_softmax(-1)
        before = log_probs.clone()
        shared = sample_from_log_probs(log_probs, log_probs.exp(), top_p, torch.Generator().manual_seed(2))
        assert torch.equal(shared, sample_tokens(x, top_p=top_p, generator=torch.Generator().manual_seed(2)))
        assert torch.equal(log_probs, before)  # inputs are left as they were


def test_nucleus_cdf_keeps_the_nucleus_mass_and_a_workspace_changes_nothing():
    x = logits(3)
    log_probs = x.log_softmax(-1)
    probs = log_probs.exp()
    workspace = Workspace()
    for top_p in (0.3, 0.95):
        plain = nucleus_cdf(log_probs, probs, top_p)
        reused = nucleus_cdf(log_probs, probs, top_p, workspace)
        assert torch.equal(plain, reused)
        kept = torch.where(_nucleus(log_probs, top_p), torch.zeros(()), probs)
        assert torch.allclose(plain[:, -1], kept.sum(-1), atol=1e-5)
        assert (plain[:, -1] >= top_p - 0.02).all()  # at least top_p, up to the histogram's resolution


def test_nucleus_survives_nan_rows():
    log_probs = logits(4, rows=3).log_softmax(-1)
    log_probs[1] = float("nan")
    outside = _nucleus(log_probs, 0.9)
    assert (~outside[0]).any() and (~outside[2]).any()


def test_workspace_hands_out_the_leading_rows_of_one_tensor():
    workspace = Workspace()
    big = workspace.get("a", torch.empty(10, 4))
    small = workspace.get("a", torch.empty(6, 4))
    assert small.shape == (6, 4) and small.is_contiguous() and small.data_ptr() == big.data_ptr()
    assert workspace.get("a", torch.empty(12, 4)).shape == (12, 4)  # larger: a new tensor
    assert workspace.get("a", torch.empty(3, 4), torch.long).dtype == torch.long
