"""Fused Triton kernels for the generator's elementwise passes: an opt-in, unmeasured GPU path.

A StyleGAN2 training step on a GPU spends half its kernel time on passes that do almost no
arithmetic: the style scale of each conv's input, and after the conv the demodulation, noise, bias,
leaky ReLU and (for upsampling layers) the pixel shuffle. Eager PyTorch reads and writes the whole
activation once per operator, forward and backward. Here each of the two becomes one pass:

- ``fused_scale_channels``: ``x * style`` per (sample, channel); its backward writes the input's
  gradient and sums the style's gradient in the same read of the gradient and the input (eager
  needs two passes, ``ops._ScaleChannels`` included).
- ``fused_bias_act``: ``leaky_relu(conv * scale + noise_weight * noise + bias, 0.2)``, the gain
  sqrt(2) folded into the three coefficients as ``StyledConv`` does eagerly (leaky ReLU commutes
  with a positive scale). It reads the conv output in the four-phase layout of an upsampling conv
  and writes the shuffled image, so the pixel shuffle costs no pass. Its backward is one pass for
  the conv's gradient and the per-(sample, channel) sums of the scale's, bias's and noise weight's
  gradients; the noise's own gradient (rarely wanted) is a second, channel-summing pass.

The demodulation coefficients themselves are a [B, in] x [in, out] product of tiny tensors, and the
blur of the upsampling layers is already folded into their conv's weights ("phases"), so neither
gets a kernel. No reference clamps (rosinality's FusedLeakyReLU has no clamp; NVIDIA's ``bias_act``
clamps only with ``conv_clamp``, off in config-f), so these do not either.

The eager code in ``stylegan2``/``ops`` stays the reference and the CPU path; the generator uses
these only after ``set_kernels("fused")``. They run on CUDA, or on any device under Triton's
interpreter (``TRITON_INTERPRET=1``, read when a kernel is first used: that is how the CPU tests run
them). Kernels are compiled lazily, once per interpreter setting, so importing this module neither
needs Triton nor fixes the mode.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import torch

from ..errors import EssenceError, ShapeError

__all__ = ["fused_scale_channels", "fused_bias_act", "require_triton"]

_KERNELS: dict[bool, SimpleNamespace] = {}  # compiled (False) / interpreted (True) kernels, built on first use


def require_triton() -> None:
    """Raise an actionable error if Triton cannot be imported (the fused path's only dependency)."""
    try:
        importlib.import_module("triton.language")
    except ImportError as exc:
        raise EssenceError(f"the fused kernels need Triton, which did not import ({exc}); install the "
                           f"`triton` package matching your torch build, or keep set_kernels('eager').") from None


def _interpreting() -> bool:
    require_triton()
    from triton import knobs

    return bool(knobs.runtime.interpret)


def _kernels_for(x: torch.Tensor) -> SimpleNamespace:
    """The kernels that can run on ``x``'s device: compiled on CUDA, interpreted under TRITON_INTERPRET=1."""
    interpret = _interpreting()
    if x.device.type != "cuda" and not interpret:
        raise EssenceError(
            f"the fused kernels run on CUDA, and on the {x.device.type} only under Triton's interpreter "
            f"(TRITON_INTERPRET=1, for tests; TRITON_INTERPRET is {os.environ.get('TRITON_INTERPRET')!r}). "
            f"Use generator.set_kernels('eager') on this device.")
    if interpret not in _KERNELS:
        from . import fused_kernels  # the Triton source; jitted here, under the current interpreter setting

        _KERNELS[interpret] = fused_kernels.build()
    return _KERNELS[interpret]


def _tile(rows: int, cols: int, x: torch.Tensor) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_N): a power-of-two tile of rows x columns per program.

    About 2048 elements on a GPU (untuned: to be timed). The interpreter runs each program in Python,
    so there a tile of up to 256 Ki elements keeps the programs few (one for most layers of the tiny
    generator) and the numpy arrays large.
    """
    import triton

    budget = 262144 if x.device.type != "cuda" or _interpreting() else 2048
    block_n = min(triton.next_power_of_2(cols), budget)
    return max(1, min(triton.next_power_of_2(rows), budget // block_n)), block_n


def _launch(kernel, rows: int, cols: int, x: torch.Tensor, *args, **constants) -> int:
    """Run ``kernel`` over a rows x cols grid of tiles; the number of column tiles (partial sums' rows)."""
    import triton

    block_r, block_n = _tile(rows, cols, x)
    chunks = triton.cdiv(cols, block_n)
    kernel[(chunks, triton.cdiv(rows, block_r))](*args, BLOCK_R=block_r, BLOCK_N=block_n, **constants)
    return chunks


# ----------------------------------------------------------------------------- input style scale


class _ScaleRows(torch.autograd.Function):
    """``x * scale[:, :, None, None]`` as one Triton pass each way. x: [B, C, H, W], scale: [B, C]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        rows, cols = x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]
        _launch(_kernels_for(x).scale_forward, rows, cols, x, x, scale, out, rows, cols)
        ctx.save_for_backward(x, scale)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, scale = ctx.saved_tensors
        want_x, want_scale = ctx.needs_input_grad[:2]
        grad = grad.contiguous()
        rows, cols = x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]
        grad_x = torch.empty_like(x) if want_x else grad  # (unwritten when not wanted)
        block_n = _tile(rows, cols, x)[1]
        sums = torch.empty(-(-cols // block_n) if want_scale else 1, rows, device=x.device, dtype=torch.float32)
        _launch(_kernels_for(x).scale_backward, rows, cols, x, grad, x, scale, grad_x, sums, rows, cols,
                WANT_X=want_x, WANT_SCALE=want_scale)
        grad_scale = sums.sum(0).view(scale.shape).to(scale.dtype) if want_scale else None
        return grad_x if want_x else None, grad_scale


def fused_scale_channels(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * scale`` per channel, as ``ops.scale_channels(x, scale)``. x [B, C, H, W], scale [B or 1, C]."""
    batch, channels = x.shape[:2]
    return _ScaleRows.apply(x, scale.to(x.dtype).expand(batch, channels).contiguous())


# ----------------------------------------------------------------------------- demodulation, noise, bias, activation


class _BiasAct(torch.autograd.Function):
    """``leaky_relu(conv * scale + noise_weight * noise + bias, 0.2)``, optionally pixel-shuffling.

    conv: [B, C, H, W], or with ``phases`` the upsampling conv's [B, 4C, h, w] before its pixel
    shuffle (channel 4c + 2p + q holds pixel (2i + p, 2j + q) of channel c); scale: [B, C];
    noise_weight: [1]; noise: [1 or B, 1, H, W]; bias: [C]. Returns [B, C, H, W].
    """

    @staticmethod
    def forward(ctx, conv: torch.Tensor, scale: torch.Tensor, noise_weight: torch.Tensor, noise: torch.Tensor,
                bias: torch.Tensor, phases: bool) -> torch.Tensor:
        conv = conv.contiguous()
        batch, channels, height, width = _out_shape(conv, phases)
        out = torch.empty(batch, channels, height, width, device=conv.device, dtype=conv.dtype)
        rows, cols = batch * channels, height * width
        noise_stride = 0 if noise.shape[0] == 1 else cols
        _launch(_kernels_for(conv).bias_act_forward, rows, cols, conv, conv, scale, noise_weight, noise, bias, out,
                rows, channels, cols, noise_stride, conv.shape[-1], PHASES=phases)
        ctx.save_for_backward(conv, scale, noise_weight, noise, out)
        ctx.phases = phases
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        conv, scale, noise_weight, noise, out = ctx.saved_tensors
        want_conv, want_scale, want_weight, want_noise, want_bias = ctx.needs_input_grad[:5]
        grad = grad.contiguous()
        batch, channels, height, width = out.shape
        rows, cols = batch * channels, height * width
        kernels = _kernels_for(conv)
        grad_conv = torch.empty_like(conv) if want_conv else grad  # (unwritten when not wanted)
        chunks = -(-cols // _tile(rows, cols, conv)[1])
        sums = torch.empty(3, chunks, rows, device=conv.device, dtype=torch.float32)
        _launch(kernels.bias_act_backward, rows, cols, conv, grad, out, conv, scale, noise, grad_conv,
                sums[0], sums[1], sums[2], rows, channels, cols, 0 if noise.shape[0] == 1 else cols, conv.shape[-1],
                PHASES=ctx.phases, WANT_CONV=want_conv, WANT_SCALE=want_scale, WANT_BIAS=want_bias,
                WANT_WEIGHT=want_weight)
        per_row = sums.sum(1).view(3, batch, channels)  # [3, B, C]
        grad_noise = _noise_grad(kernels, grad, out, noise_weight, noise) if want_noise else None
        return (grad_conv if want_conv else None,
                per_row[0].to(scale.dtype) if want_scale else None,
                per_row[2].sum().reshape(1).to(noise_weight.dtype) if want_weight else None,
                grad_noise,
                per_row[1].sum(0).to(scale.dtype) if want_bias else None,
                None)


def _out_shape(conv: torch.Tensor, phases: bool) -> tuple[int, int, int, int]:
    batch, channels, height, width = conv.shape
    if not phases:
        return batch, channels, height, width
    return batch, channels // 4, 2 * height, 2 * width


def _noise_grad(kernels: SimpleNamespace, grad: torch.Tensor, out: torch.Tensor, noise_weight: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
    """d loss / d noise [1 or B, 1, H, W]: the activation's gradient summed over the channels, one pass."""
    import triton

    batch, channels, height, width = out.shape
    cols = height * width
    block_c, block_n = _tile(channels, cols, out)
    grad_noise = torch.empty(batch, 1, height, width, device=out.device, dtype=torch.float32)
    kernels.noise_backward[(triton.cdiv(cols, block_n), batch)](
        grad, out, noise_weight, grad_noise, channels, cols, BLOCK_C=block_c, BLOCK_N=block_n)
    return grad_noise.sum_to_size(noise.shape).to(noise.dtype)


def fused_bias_act(conv: torch.Tensor, scale: torch.Tensor, noise_weight: torch.Tensor, noise: torch.Tensor,
                   bias: torch.Tensor, phases: bool = False) -> torch.Tensor:
    """``leaky_relu(conv * scale + noise_weight * noise + bias, 0.2)`` in one pass (see ``_BiasAct``).

    Every operand is cast to ``conv``'s dtype as the eager ``StyledConv`` does; the kernels compute
    in float32 and store in that dtype.
    """
    batch, channels, height, width = _out_shape(conv, phases)
    if noise.ndim != 4 or noise.shape[1:] != (1, height, width) or noise.shape[0] not in (1, batch):
        raise ShapeError(f"noise must have shape [1 or {batch}, 1, {height}, {width}] for this layer, "
                         f"got {list(noise.shape)}.")
    dtype = conv.dtype
    return _BiasAct.apply(conv, scale.to(dtype).expand(batch, channels).contiguous(),
                          noise_weight.to(dtype).reshape(1), noise.to(dtype).contiguous(),
                          bias.to(dtype).contiguous(), phases)
