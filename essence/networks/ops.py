"""StyleGAN2's resampling and activation ops in plain PyTorch.

The reference generator uses two compiled CUDA extensions (upfirdn2d and fused bias + leaky ReLU).
Essence re-expresses both with standard ``torch.nn.functional`` calls so the pack needs no build
step and runs on CPU, CUDA, MPS and ROCm alike; the results match the reference's own CPU fallback.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)


def bias_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``leaky_relu(x + bias) * sqrt(2)``: the reference's fused op, bias broadcast over dim 1."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    return F.leaky_relu(x, LEAKY_SLOPE) * LEAKY_GAIN


def make_blur_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable FIR taps -> normalised 2-D kernel (outer product, sums to 1), on the default device.

    Computed on the CPU, and left there while a model is built on the meta device to receive a file's
    weights (which hold the kernels): torch's meta kernels for this arithmetic import its compiler,
    1.1 s of every process that loads a model."""
    k = torch.as_tensor(taps, dtype=torch.float32, device="cpu")
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    k = k / k.sum()
    device = torch.get_default_device()
    return k if device.type == "meta" else k.to(device)


def standard_normal(*shape: int, divisor: float = 1.0) -> torch.Tensor:
    """``torch.randn(*shape) / divisor``, the reference's initial weights; left unfilled on the meta device,
    where a model is built only to receive a file's weights (filling it there would import torch's
    compiler: 1.1 s of every process that loads a model)."""
    tensor = torch.empty(*shape)
    if tensor.is_meta:
        return tensor
    tensor.normal_()
    return tensor if divisor == 1.0 else tensor.div_(divisor)


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with ``kernel`` (true convolution), downsample.

    x: [B, C, H, W]; the same 2-D kernel is applied to every channel (a depthwise conv), and
    downsampling is the conv's stride, which equals taking every ``down``-th output.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    pad0, pad1 = pad
    x = F.pad(x, [max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)])
    if pad0 < 0 or pad1 < 0:
        x = x[:, :, max(-pad0, 0): x.shape[2] - max(-pad1, 0), max(-pad0, 0): x.shape[3] - max(-pad1, 0)]
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)
    weight = weight[None, None].expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=channels)


class _ScaleChannels(torch.autograd.Function):
    """``offset + x * scale[:, :, None, None]`` with a leaner backward.

    Autograd's own backward for the scale multiplies gradient and input into a full-size temporary,
    then sums it over the pixels. Here that is one batched dot product per (sample, channel), which
    reads both tensors once and writes nothing large; in StyleGAN2 these products run at every
    layer and resolution, so the saving is a large share of a training step's memory traffic.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, scale)
        ctx.offset_shape = None if offset is None else offset.shape
        scale4 = scale[:, :, None, None]
        return x * scale4 if offset is None else torch.addcmul(offset, x, scale4)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale = ctx.saved_tensors
        grad_x = grad * scale[:, :, None, None] if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            grad_scale = torch.einsum("bchw,bchw->bc", grad, x)
            if grad_scale.shape != scale.shape:  # scale was broadcast over the batch
                grad_scale = grad_scale.sum_to_size(scale.shape)
        grad_offset = grad.sum_to_size(ctx.offset_shape) if ctx.needs_input_grad[2] else None
        return grad_x, grad_scale, grad_offset


def scale_channels(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``offset + x * scale`` per channel: x [B, C, H, W], scale [B or 1, C], offset broadcastable to x."""
    return _ScaleChannels.apply(x, scale.to(x.dtype), None if offset is None else offset.to(x.dtype))
