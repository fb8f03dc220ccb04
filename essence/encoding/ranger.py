"""Ranger, the optimiser of TargetCLIP's encoder variant, as ``pytorch-optimizer`` provides it.

The official coach trains the encoder with lessw2020's Ranger (version 20.4.11): RAdam whose first
updates are momentum SGD while the variance estimate is too short (N_sma <= 5, updates 1-5 with
beta2 0.999), Lookahead (slow weights pulled half-way to the fast ones every 6 updates, then copied
back), betas (0.95, 0.999), eps 1e-5, no weight decay, and gradient centralisation (each gradient of
two or more dimensions minus its mean over all but the first dimension).

``pytorch_optimizer.Ranger`` (4.1.0) computes the same updates, with one setting that differs from
its default: ``degenerated_to_sgd=True``. With its default (False) the warm-up updates are not the
official momentum SGD. Its other differences are rounding only: it forms the moving average with
``lerp`` and counts steps per parameter group rather than per parameter (the same count here, as
every encoder parameter gets a gradient every step). ``tests/test_encoder_ranger.py`` checks it
against the official update rule over 14 updates, and the encoder trace checks it end to end.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

# The official Ranger's settings, as TargetCLIP's coach builds it (only the learning rate is passed).
RANGER_OPTIONS: dict[str, Any] = {
    "betas": (0.95, 0.999), "alpha": 0.5, "k": 6, "n_sma_threshold": 5, "degenerated_to_sgd": True,
    "weight_decay": 0.0, "use_gc": True, "gc_conv_only": False, "eps": 1e-5,
}


def official_ranger(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Ranger with the official settings at learning rate ``lr`` (TargetCLIP's README: 1e-4, constant)."""
    from pytorch_optimizer import Ranger

    return Ranger(params, lr=lr, **RANGER_OPTIONS)
