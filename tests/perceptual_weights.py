"""A deterministic stand-in for torchvision's ImageNet AlexNet, the backbone of LPIPS.

The real ``alexnet-owt-7be5be79.pth`` (233 MB) cannot ship with the tests. LPIPS uses only its five
convolutions, so the tests (and ``tests/tools/make_pti_trace.py``, which ran PTI's own code with the
same backbone) fill those with ``identity_weights.fill_state``: each tensor from its own seeded
generator, convolutions ~ N(0, 1/fan_in), biases ~ N(0, 0.01^2). LPIPS's linear heads are the real
ones, from the lpips package.
"""

from __future__ import annotations

from pathlib import Path

import torch
from identity_weights import fill_state

SEED = 7
FILENAME = "alexnet-owt-7be5be79.pth"
SHAPES = {  # torchvision.models.alexnet().features: the five convolutions
    "features.0.weight": ([64, 3, 11, 11], "float32"), "features.0.bias": ([64], "float32"),
    "features.3.weight": ([192, 64, 5, 5], "float32"), "features.3.bias": ([192], "float32"),
    "features.6.weight": ([384, 192, 3, 3], "float32"), "features.6.bias": ([384], "float32"),
    "features.8.weight": ([256, 384, 3, 3], "float32"), "features.8.bias": ([256], "float32"),
    "features.10.weight": ([256, 256, 3, 3], "float32"), "features.10.bias": ([256], "float32"),
}


def alexnet_state(seed: int = SEED) -> dict[str, torch.Tensor]:
    """The backbone's tensors under torchvision's keys."""
    return fill_state(SHAPES, seed)


def write_alexnet(path: Path, seed: int = SEED) -> Path:
    """The stand-in file, in torchvision's layout (features only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(alexnet_state(seed), path)
    return path
