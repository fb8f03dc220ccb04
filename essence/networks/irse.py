"""IR-SE ResNet building blocks, shared by the e4e encoder and the ArcFace identity network.

Both networks descend from TreB1eN/InsightFace_Pytorch's IR-SE-50 and name their tensors the
same way (``input_layer.*``, ``body.<i>.res_layer.*``, ``body.<i>.shortcut_layer.*``), so the
units, their layout and the reading of that layout off a state dict live here once.

A unit is described by ``(in_channel, depth, stride, se_reduced)``: ``se_reduced`` is the width
inside the squeeze-and-excitation gate (``depth // 16`` in the published files).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

Unit = tuple[int, int, int, int]  # (in_channel, depth, stride, se_reduced)

IR_SE_50_COUNTS = (3, 4, 14, 3)  # units per block of IR-SE-50 (the reference's get_blocks(50))
IR_SE_WIDTHS = (64, 128, 256, 512)
SE_REDUCTION = 16


class SEModule(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their global average."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    """One IR-SE unit (the reference's ``bottleneck_IR_SE``)."""

    def __init__(self, in_channel: int, depth: int, stride: int, se_reduced: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, se_reduced),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def input_stem(width: int) -> nn.Sequential:
    """The 3x3 conv + BatchNorm + PReLU that opens both networks (``input_layer.*``)."""
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))


def unit_body(units: tuple[Unit, ...]) -> nn.Sequential:
    """The ``body.*`` sequence of IR-SE units."""
    return nn.Sequential(*[BottleneckIRSE(*unit) for unit in units])


def ir_se_units(widths: tuple[int, ...] = IR_SE_WIDTHS, counts: tuple[int, ...] = IR_SE_50_COUNTS,
                reduction: int = SE_REDUCTION) -> tuple[Unit, ...]:
    """The units of an IR-SE ResNet: each block starts with a stride-2 unit (the very first one
    keeps the stem's width, so IR-SE-50 is 3, 4, 14 and 3 units at 64, 128, 256 and 512 channels)."""
    units, in_c = [], widths[0]
    for depth, count in zip(widths, counts):
        for j in range(count):
            units.append((in_c, depth, 2 if j == 0 else 1, max(1, depth // reduction)))
            in_c = depth
    return tuple(units)


def units_from_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[tuple[Unit, ...], tuple[int, ...]]:
    """The units stored under ``body.*`` and the index of each block's last unit.

    Each block starts with a stride-2 unit: the first unit, and every unit whose width changes
    (the reference's ``get_blocks``). Raises ``KeyError`` naming a missing tensor; the caller
    turns that into an error about its own kind of file.
    """
    n_units = len({k.split(".")[1] for k in state if k.startswith("body.")})
    units: list[Unit] = []
    block_ends: list[int] = []
    for i in range(n_units):
        conv = state[f"body.{i}.res_layer.1.weight"]  # [depth, in, 3, 3]
        depth, in_c = conv.shape[0], conv.shape[1]
        starts_block = i == 0 or depth != in_c
        if starts_block and i > 0:
            block_ends.append(i - 1)
        units.append((in_c, depth, 2 if starts_block else 1, state[f"body.{i}.res_layer.5.fc1.weight"].shape[0]))
    if n_units:
        block_ends.append(n_units - 1)
    return tuple(units), tuple(block_ends)
