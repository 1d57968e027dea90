import math

import torch

from entrgi_pipelines.guidance.entrgi import entrgi_embeddings, entropy_weight, method_weight, optimize_logits


def setup_inputs(seed=0, P=5, V=11, D=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(P, V, generator=g) * 3
    E = torch.randn(V, D, generator=g)
    hard_ids = torch.randint(0, V, (P,), generator=g)
    head = torch.randn(D, generator=g)
    return logits, E, hard_ids, head


def forward_and_grad(logits, E, hard_ids, head, weight, tau=0.7):
    phi = logits.clone().requires_grad_(True)
    soft = (phi / tau).softmax(-1) @ E
    out = entrgi_embeddings(soft, E[hard_ids], weight)
    (out @ head).pow(2).sum().backward()
    return out.detach(), phi.grad


def test_weight_one_is_exactly_the_straight_through_estimator():
    logits, E, hard_ids, head = setup_inputs()
    out, grad = forward_and_grad(logits, E, hard_ids, head, torch.ones(5))
    phi = logits.clone().requires_grad_(True)
    soft = (phi / 0.7).softmax(-1) @ E
    ste = soft + (E[hard_ids] - soft).detach()
    (ste @ head).pow(2).sum().backward()
    assert torch.equal(out, ste.detach())
    assert torch.allclose(out, E[hard_ids], atol=1e-6)  # forward value: the hard token
    assert torch.equal(grad, phi.grad)


def test_weight_zero_is_exactly_the_expectation():
    logits, E, hard_ids, head = setup_inputs(1)
    out, grad = forward_and_grad(logits, E, hard_ids, head, torch.zeros(5))
    phi = logits.clone().requires_grad_(True)
    soft = (phi / 0.7).softmax(-1) @ E
    (soft @ head).pow(2).sum().backward()
    assert torch.equal(out, soft.detach())
    assert torch.equal(grad, phi.grad)


def test_intermediate_weight_mixes_forward_but_routes_gradient_through_soft():
    logits, E, hard_ids, head = setup_inputs(2)
    w = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    out, _ = forward_and_grad(logits, E, hard_ids, head, w)
    soft = (logits / 0.7).softmax(-1) @ E
    assert torch.allclose(out, (1 - w[:, None]) * soft + w[:, None] * E[hard_ids], atol=1e-6)
    # d out / d phi is the Jacobian of soft alone, whatever w: check with a linear objective
    phi = logits.clone().requires_grad_(True)
    (entrgi_embeddings((phi / 0.7).softmax(-1) @ E, E[hard_ids], w) @ head).sum().backward()
    phi_soft = logits.clone().requires_grad_(True)
    (((phi_soft / 0.7).softmax(-1) @ E) @ head).sum().backward()
    assert torch.allclose(phi.grad, phi_soft.grad)


def test_entropy_weight_is_normalised_entropy_without_gradient():
    V = 8
    uniform = torch.zeros(1, V)
    peaked = torch.tensor([[50.0] + [0.0] * (V - 1)])
    assert torch.allclose(entropy_weight(uniform), torch.ones(1))
    assert entropy_weight(peaked).item() < 1e-6
    logits = torch.randn(6, V, requires_grad=True)
    w = entropy_weight(logits)
    assert not w.requires_grad and ((w >= 0) & (w <= 1)).all()
    p = logits.detach().softmax(-1)
    assert torch.allclose(w, -(p * p.log()).sum(-1) / math.log(V), atol=1e-6)
    assert torch.equal(method_weight("aps", logits), torch.ones(6))
    assert torch.equal(method_weight("expectation", logits), torch.zeros(6))
    assert torch.equal(method_weight("entrgi", logits), w)


def test_optimize_logits_ascends_a_reward_and_touches_only_the_logits():
    logits, E, _, head = setup_inputs(3)
    E.requires_grad_(True)  # a "weight" that must not receive a gradient

    def reward(probs, hard, weight):
        return entrgi_embeddings(probs @ E, E[hard], weight) @ head

    def expected_reward(phi):
        return (((phi / 0.7).softmax(-1) @ E) @ head).sum()

    for method in ("entrgi", "aps", "expectation"):
        out = optimize_logits(
            logits,
            reward,
            method=method,
            num_steps=20,
            lr=0.5,
            temperature=0.7,
            generator=torch.Generator().manual_seed(0),
        )
        assert expected_reward(out) > expected_reward(logits)
        assert out.dtype == logits.dtype and not out.requires_grad
    assert E.grad is None
    assert torch.equal(optimize_logits(logits, reward, num_steps=0), logits)
