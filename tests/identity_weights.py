"""Deterministic ArcFace weights and face-like inputs, rebuilt from a key list and a seed.

The real ``model_ir_se50.pth`` (175 MB) cannot ship with the tests, and neither can a random one.
Instead ``tests/tools/make_identity_fixture.py`` fills the REFERENCE ``Backbone``'s state dict with
``fill_state`` and records only the key list and the reference's embeddings; the tests rebuild the
very same tensors here, without the reference code, and load them through Essence.

Every tensor comes from its own generator, seeded by the seed and the key's CRC-32, so the values
do not depend on the order or the number of keys. Scales keep a 50-unit random network's
activations in a sensible range: convolutions and linear layers ~ N(0, 1/fan_in); BatchNorm
weights near 1, biases and running means near 0, running variances in [0.5, 1.5]; PReLU slopes
near 0.25.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "int64": torch.int64}


def key_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63)


def fill_tensor(key: str, shape: Sequence[int], dtype: str, seed: int, keys: frozenset[str]) -> torch.Tensor:
    """The value of one tensor (see the module docstring for the rule)."""
    if dtype == "int64":  # BatchNorm's num_batches_tracked
        return torch.zeros(shape, dtype=torch.int64)
    gen = torch.Generator().manual_seed(key_seed(seed, key))
    noise = torch.randn(tuple(shape), generator=gen)
    prefix, _, leaf = key.rpartition(".")
    is_norm = f"{prefix}.running_var" in keys
    if leaf == "running_var":
        return 0.5 + torch.rand(tuple(shape), generator=gen)
    if leaf == "running_mean" or (is_norm and leaf == "bias"):
        return 0.1 * noise
    if is_norm and leaf == "weight":
        return 1.0 + 0.1 * noise
    if len(shape) >= 2:  # convolution or linear weight
        fan_in = 1
        for n in shape[1:]:
            fan_in *= n
        return noise / fan_in ** 0.5
    if leaf == "weight":  # PReLU slopes
        return 0.25 + 0.05 * noise
    return 0.01 * noise  # linear bias


def fill_state(shapes: Mapping[str, tuple[Sequence[int], str]], seed: int) -> dict[str, torch.Tensor]:
    """``{key: (shape, dtype name)}`` -> the deterministic state dict."""
    keys = frozenset(shapes)
    return {key: fill_tensor(key, shape, dtype, seed, keys) for key, (shape, dtype) in sorted(shapes.items())}


def describe_state(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[list[int], str]]:
    """A state dict's ``{key: (shape, dtype name)}``, the form ``fill_state`` takes."""
    names = {v: k for k, v in DTYPES.items()}
    return {key: (list(t.shape), names[t.dtype]) for key, t in state.items()}


def face_like_inputs(seed: int, count: int, size: int) -> torch.Tensor:
    """Smooth random images [count, 3, size, size] in (-1, 1): low-frequency content survives the
    pooling to 256 and 112 px, so different inputs give clearly different embeddings."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 12, 12, generator=gen)
    return torch.tanh(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))


def save_identity_file(path: Path, state: Mapping[str, torch.Tensor]) -> Path:
    """Write ``state`` as ``model_ir_se50.pth`` is written: a plain ``torch.save``d state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), path)
    return path
