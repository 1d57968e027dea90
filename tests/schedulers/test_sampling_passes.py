"""The shared-pass sampling helpers of the scheduler: same draws and values as the plain definitions."""

import math

import torch

from entrgi_pipelines.schedulers import scheduling_masked_diffusion
from entrgi_pipelines.schedulers.scheduling_masked_diffusion import (
    _nucleus,
    entropy_,
    nucleus_cdf,
    nucleus_threshold,
    sample_from_probs,
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


def test_sampling_from_shared_probs_draws_as_sample_tokens():
    x = logits(1)
    for top_p in (None, 0.5, 0.9, 0.999):
        probs = x.log_softmax(-1).exp()
        before = probs.clone()
        shared = sample_from_probs(probs, top_p, torch.Generator().manual_seed(2))
        assert torch.equal(shared, sample_tokens(x, top_p=top_p, generator=torch.Generator().manual_seed(2)))
        assert torch.equal(probs, before)  # the input is left as it was


def test_nucleus_cdf_keeps_exactly_the_nucleus_mass():
    x = logits(3)
    log_probs = x.log_softmax(-1)
    probs = log_probs.exp()
    for top_p in (0.3, 0.95):
        cdf = nucleus_cdf(probs, top_p)
        kept = torch.where(_nucleus(log_probs, top_p), torch.zeros(()), probs)
        assert torch.allclose(cdf[:, -1], kept.sum(-1), atol=1e-5)
        # at least top_p, and without the last kept token less than top_p (the smallest such set, exactly)
        smallest = torch.where(kept > 0, kept, torch.inf).min(-1).values
        assert (cdf[:, -1] >= top_p - 1e-5).all() and (cdf[:, -1] - smallest < top_p + 1e-5).all()


def test_chunked_sort_gives_the_threshold_of_one_sort(monkeypatch):
    probs = logits(5, rows=37).softmax(-1)
    whole = nucleus_threshold(probs, 0.9)
    monkeypatch.setattr(scheduling_masked_diffusion, "_CHUNK_ELEMENTS", 4 * probs.shape[-1])  # 10 chunks
    assert torch.equal(nucleus_threshold(probs, 0.9), whole)
    assert nucleus_threshold(probs[None], 0.9).shape == (1, 37, 1)  # any leading shape


def test_nucleus_survives_nan_rows():
    log_probs = logits(4, rows=3).log_softmax(-1)
    log_probs[1] = float("nan")
    outside = _nucleus(log_probs, 0.9)
    assert (~outside[0]).any() and (~outside[2]).any()


def test_the_cpu_histogram_nucleus_is_the_sorted_nucleus():
    # CPU finds the boundary by a two-level histogram, accelerators by a sort: the same tokens but for float rounding
    # of the summed mass at the boundary (at most one token a row, here none in most rows).
    g = torch.Generator().manual_seed(6)
    for vocab, scale in ((300, 1.0), (5000, 0.3), (5000, 4.0)):
        probs = (torch.randn(64, vocab, generator=g) * scale).softmax(-1)
        for top_p in (0.3, 0.9, 0.95, 0.999):
            by_sort = probs >= nucleus_threshold(probs, top_p)
            by_histogram = scheduling_masked_diffusion.nucleus_mask(probs, top_p)  # on CPU: the histogram
            differ = (by_sort != by_histogram).sum(-1)
            assert (differ <= 1).all() and differ.sum() <= 3, (vocab, scale, top_p)


def test_chunked_histogram_gives_the_mask_of_one_pass(monkeypatch):
    probs = logits(7, rows=37).softmax(-1)
    whole, cdf = scheduling_masked_diffusion.nucleus_mask(probs, 0.9), nucleus_cdf(probs, 0.9)
    monkeypatch.setattr(scheduling_masked_diffusion, "_CPU_CHUNK_ELEMENTS", 4 * probs.shape[-1])  # 10 chunks
    assert torch.equal(scheduling_masked_diffusion.nucleus_mask(probs, 0.9), whole)
    assert torch.equal(nucleus_cdf(probs, 0.9), cdf)
    assert torch.equal(cdf, torch.where(whole, probs, 0.0).cumsum(-1))
