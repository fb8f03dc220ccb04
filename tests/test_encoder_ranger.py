"""``pytorch-optimizer``'s Ranger with Essence's settings is the official TargetCLIP Ranger, update for update.

The reference below is the official optimiser's update rule (lessw2020's Ranger 20.4.11 as TargetCLIP
vendors it, ``training/ranger.py``), written out here from its arithmetic: gradient centralisation of
every gradient of 2 or more dimensions; RAdam's moments with betas (0.95, 0.999); while
N_sma = N_max - 2t b2^t / (1 - b2^t) is at most 5 (updates 1-5) a momentum step of lr / (1 - b1^t);
after it the rectified adaptive step; every 6th update the slow weights move half-way to the fast
ones and are copied back. 14 updates cover the warm-up, the switch and two Lookahead syncs.
"""

from __future__ import annotations

import math

import torch

from essence.encoding import RANGER_OPTIONS, official_ranger

SHAPES = [(4, 3, 3, 3), (8, 5), (7,)]  # a convolution, a linear layer (both centralised), a bias (not)
UPDATES = 14


def _reference_ranger(params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float) -> list[torch.Tensor]:
    beta1, beta2, eps, alpha, k = 0.95, 0.999, 1e-5, 0.5, 6
    params = [p.clone().double() for p in params]
    slow = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    n_max = 2 / (1 - beta2) - 1
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g.double()
            if g.dim() > 1:
                g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            b2t = beta2 ** t
            n_sma = n_max - 2 * t * b2t / (1 - b2t)
            if n_sma > 5:
                rate = math.sqrt((1 - b2t) * (n_sma - 4) / (n_max - 4) * (n_sma - 2) / n_sma * n_max / (n_max - 2))
                params[i] = params[i] - lr * rate / (1 - beta1 ** t) * m[i] / (v[i].sqrt() + eps)
            else:
                params[i] = params[i] - lr / (1 - beta1 ** t) * m[i]
            if t % k == 0:
                slow[i] = slow[i] + alpha * (params[i] - slow[i])
                params[i] = slow[i].clone()
    return params


def _gradients(seed: int = 0) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=gen) * (1 + step) for shape in SHAPES] for step in range(UPDATES)]


def _run_package(params: list[torch.Tensor], grads: list[list[torch.Tensor]], lr: float, **options) -> list[torch.Tensor]:
    live = [torch.nn.Parameter(p.clone()) for p in params]
    if options:
        from pytorch_optimizer import Ranger

        optimizer = Ranger(live, lr=lr, **{**RANGER_OPTIONS, **options})
    else:
        optimizer = official_ranger(live, lr)
    for step_grads in grads:
        for p, g in zip(live, step_grads):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in live]


def test_pytorch_optimizer_s_ranger_is_the_official_one_update_for_update():
    params = [torch.randn(shape, generator=torch.Generator().manual_seed(1)) for shape in SHAPES]
    grads = _gradients()
    for updates in (1, 5, 6, 7, 12, UPDATES):  # warm-up, the switch to adaptive steps, both Lookahead syncs
        expected = _reference_ranger(params, grads[:updates], lr=1e-2)
        got = _run_package(params, grads[:updates], lr=1e-2)
        for e, g in zip(expected, got):
            assert torch.allclose(g.double(), e, rtol=1e-6, atol=1e-7), updates


def test_its_default_warm_up_is_not_the_official_one():
    """Why ``degenerated_to_sgd=True``: with the package's default the first five updates differ."""
    params = [torch.randn(shape, generator=torch.Generator().manual_seed(1)) for shape in SHAPES]
    grads = _gradients()[:3]
    expected = _reference_ranger(params, grads, lr=1e-2)
    got = _run_package(params, grads, lr=1e-2, degenerated_to_sgd=False)
    assert not torch.allclose(got[0].double(), expected[0], rtol=1e-3, atol=1e-5)


def test_the_official_settings():
    assert RANGER_OPTIONS["betas"] == (0.95, 0.999) and RANGER_OPTIONS["eps"] == 1e-5
    assert (RANGER_OPTIONS["alpha"], RANGER_OPTIONS["k"], RANGER_OPTIONS["n_sma_threshold"]) == (0.5, 6, 5)
    assert RANGER_OPTIONS["weight_decay"] == 0 and RANGER_OPTIONS["use_gc"] and not RANGER_OPTIONS["gc_conv_only"]
