"""The Triton source of ``fused``'s kernels, jitted by ``build()`` when first used.

Kept apart so that importing the library never imports Triton, and so that the choice between
compiled and interpreted kernels (``triton.jit`` reads TRITON_INTERPRET when it wraps a function)
is made at first use, not at import. Every kernel works on an activation seen as rows x columns:
a row is one (sample, channel) plane of H * W pixels, contiguous, and each program owns a
BLOCK_R x BLOCK_N tile. Sums over a row are written per column tile (``sums[tile, row]``) and
added up by the caller: deterministic, no atomics. Arithmetic is float32 whatever the storage
dtype. The leaky ReLU's slope, 0.2, is written out in each kernel.

Sums are ``tl.reduce(x, axis, tl.standard._sum_combine)``, which is what ``tl.sum`` compiles to,
rather than ``tl.sum`` itself: ``tl.sum`` is a jitted function, wrapped once when Triton is imported,
so a process that imported Triton before setting TRITON_INTERPRET (pytest, a notebook) holds a
compiled ``tl.sum`` that the interpreter refuses to call; ``tl.reduce`` is a builtin, and the
interpreter recognises this combine function and sums with numpy. (``tl.zeros`` is jitted too:
``tl.full`` instead.)
"""

from __future__ import annotations

from types import SimpleNamespace

import triton
import triton.language as tl


def _scale_forward(x_ptr, scale_ptr, out_ptr, rows, cols, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = x * scale[row]."""
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (r[:, None] < rows) & (n[None, :] < cols)
    offsets = r.to(tl.int64)[:, None] * cols + n[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + r, mask=r < rows, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (x * s[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


def _scale_backward(grad_ptr, x_ptr, scale_ptr, grad_x_ptr, sums_ptr, rows, cols,
                    WANT_X: tl.constexpr, WANT_SCALE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """grad_x = grad * scale[row]; sums[tile, row] = sum over the tile's columns of grad * x."""
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (r[:, None] < rows) & (n[None, :] < cols)
    offsets = r.to(tl.int64)[:, None] * cols + n[None, :]
    g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if WANT_X:
        s = tl.load(scale_ptr + r, mask=r < rows, other=0.0).to(tl.float32)
        tl.store(grad_x_ptr + offsets, (g * s[:, None]).to(grad_x_ptr.dtype.element_ty), mask=mask)
    if WANT_SCALE:
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(sums_ptr + tl.program_id(0) * rows + r, tl.reduce(g * x, 1, tl.standard._sum_combine), mask=r < rows)


def _bias_act_forward(conv_ptr, scale_ptr, weight_ptr, noise_ptr, bias_ptr, out_ptr, rows, channels, cols,
                      noise_stride, width, PHASES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = leaky(conv * scale[row] + weight * noise[sample] + bias[channel]).

    With PHASES, output pixel (Y, X) of a row is read from phase 2 (Y % 2) + X % 2 of that row's four
    (each h * w = cols / 4 long, ``width`` = w) at (Y // 2, X // 2): the pixel shuffle, done by the load.
    """
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = r < rows
    mask = rmask[:, None] & (n[None, :] < cols)
    row_start = r.to(tl.int64)[:, None] * cols
    if PHASES:
        y, x = n // (2 * width), n % (2 * width)
        source = ((y % 2) * 2 + x % 2) * (cols // 4) + (y // 2) * width + x // 2
    else:
        source = n
    conv = tl.load(conv_ptr + row_start + source[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + r, mask=rmask, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + r % channels, mask=rmask, other=0.0).to(tl.float32)
    noise_start = (r // channels).to(tl.int64)[:, None] * noise_stride
    noise = tl.load(noise_ptr + noise_start + n[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr).to(tl.float32)
    pre = w * noise + conv * s[:, None] + b[:, None]
    out = tl.where(pre > 0, pre, pre * 0.2)
    tl.store(out_ptr + row_start + n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def _bias_act_backward(grad_ptr, out_ptr, conv_ptr, scale_ptr, noise_ptr, grad_conv_ptr, scale_sums_ptr,
                       bias_sums_ptr, weight_sums_ptr, rows, channels, cols, noise_stride, width,
                       PHASES: tl.constexpr, WANT_CONV: tl.constexpr, WANT_SCALE: tl.constexpr,
                       WANT_BIAS: tl.constexpr, WANT_WEIGHT: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """With gp = grad * leaky'(out) (the output's sign is the pre-activation's): grad_conv = gp * scale,
    written in conv's layout; per (tile, row) sums of gp * conv (scale), gp (bias) and gp * noise (weight)."""
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = r < rows
    mask = rmask[:, None] & (n[None, :] < cols)
    row_start = r.to(tl.int64)[:, None] * cols
    if PHASES:
        y, x = n // (2 * width), n % (2 * width)
        source = ((y % 2) * 2 + x % 2) * (cols // 4) + (y // 2) * width + x // 2
    else:
        source = n
    g = tl.load(grad_ptr + row_start + n[None, :], mask=mask, other=0.0).to(tl.float32)
    out = tl.load(out_ptr + row_start + n[None, :], mask=mask, other=0.0).to(tl.float32)
    gp = tl.where(out > 0, g, g * 0.2)
    sums_at = tl.program_id(0) * rows + r
    if WANT_CONV:
        s = tl.load(scale_ptr + r, mask=rmask, other=0.0).to(tl.float32)
        tl.store(grad_conv_ptr + row_start + source[None, :],
                 (gp * s[:, None]).to(grad_conv_ptr.dtype.element_ty), mask=mask)
    if WANT_SCALE:
        conv = tl.load(conv_ptr + row_start + source[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(scale_sums_ptr + sums_at, tl.reduce(gp * conv, 1, tl.standard._sum_combine), mask=rmask)
    if WANT_BIAS:
        tl.store(bias_sums_ptr + sums_at, tl.reduce(gp, 1, tl.standard._sum_combine), mask=rmask)
    if WANT_WEIGHT:
        noise_start = (r // channels).to(tl.int64)[:, None] * noise_stride
        noise = tl.load(noise_ptr + noise_start + n[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(weight_sums_ptr + sums_at, tl.reduce(gp * noise, 1, tl.standard._sum_combine), mask=rmask)


def _noise_backward(grad_ptr, out_ptr, weight_ptr, grad_noise_ptr, channels, cols,
                    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """grad_noise[sample, pixel] = weight * sum over channels of grad * leaky'(out). Grid: (tiles, samples)."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    sample = tl.program_id(1)
    acc = tl.full([BLOCK_N], 0.0, tl.float32)  # (tl.zeros is jitted: see the module docstring)
    for c0 in range(0, channels, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c[:, None] < channels) & (n[None, :] < cols)
        offsets = (sample * channels + c).to(tl.int64)[:, None] * cols + n[None, :]
        g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        out = tl.load(out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        acc += tl.reduce(tl.where(out > 0, g, g * 0.2), 0, tl.standard._sum_combine)
    w = tl.load(weight_ptr).to(tl.float32)
    tl.store(grad_noise_ptr + sample.to(tl.int64) * cols + n, acc * w, mask=n < cols)


def build() -> SimpleNamespace:
    """The kernels, jitted now: interpreted if TRITON_INTERPRET is set at this moment, else compiled."""
    return SimpleNamespace(scale_forward=triton.jit(_scale_forward), scale_backward=triton.jit(_scale_backward),
                           bias_act_forward=triton.jit(_bias_act_forward),
                           bias_act_backward=triton.jit(_bias_act_backward),
                           noise_backward=triton.jit(_noise_backward))
