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

import types
from types import SimpleNamespace

import triton
import triton.language as tl


def _activation_tile(rows, cols, width, PHASES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's BLOCK_R x BLOCK_N tile of a rows x cols activation: its rows ``r`` and columns
    ``n``, their masks, each row's start, and the column each output pixel reads from (``n`` itself;
    with PHASES, the pixel shuffle of ``_bias_act_forward``)."""
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
    return r, n, rmask, mask, row_start, source


_HELPERS = ("_activation_tile",)  # device functions the kernels call (see build)


def _scale_forward(x_ptr, scale_ptr, out_ptr, rows, cols, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = x * scale[row]."""
    r, n, rmask, mask, row_start, _ = _activation_tile(rows, cols, 0, False, BLOCK_R, BLOCK_N)
    offsets = row_start + n[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + r, mask=rmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (x * s[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


def _scale_backward(grad_ptr, x_ptr, scale_ptr, grad_x_ptr, sums_ptr, rows, cols,
                    WANT_X: tl.constexpr, WANT_SCALE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """grad_x = grad * scale[row]; sums[tile, row] = sum over the tile's columns of grad * x."""
    r, n, rmask, mask, row_start, _ = _activation_tile(rows, cols, 0, False, BLOCK_R, BLOCK_N)
    offsets = row_start + n[None, :]
    g = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if WANT_X:
        s = tl.load(scale_ptr + r, mask=rmask, other=0.0).to(tl.float32)
        tl.store(grad_x_ptr + offsets, (g * s[:, None]).to(grad_x_ptr.dtype.element_ty), mask=mask)
    if WANT_SCALE:
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(sums_ptr + tl.program_id(0) * rows + r, tl.reduce(g * x, 1, tl.standard._sum_combine), mask=rmask)


def _bias_act_forward(conv_ptr, scale_ptr, weight_ptr, noise_ptr, bias_ptr, out_ptr, rows, channels, cols,
                      noise_stride, width, PHASES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = leaky(conv * scale[row] + weight * noise[sample] + bias[channel]).

    With PHASES, output pixel (Y, X) of a row is read from phase 2 (Y % 2) + X % 2 of that row's four
    (each h * w = cols / 4 long, ``width`` = w) at (Y // 2, X // 2): the pixel shuffle, done by the load.
    """
    r, n, rmask, mask, row_start, source = _activation_tile(rows, cols, width, PHASES, BLOCK_R, BLOCK_N)
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
    r, n, rmask, mask, row_start, source = _activation_tile(rows, cols, width, PHASES, BLOCK_R, BLOCK_N)
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
    """The kernels, jitted now: interpreted if TRITON_INTERPRET is set at this moment, else compiled.

    A kernel finds the helpers it calls among its globals, jitted the same way as itself; each build
    gives its kernels their own copy of this module's globals, so interpreted and compiled kernels
    can live in one process (the tests run both) without one build's helpers replacing the other's.
    """
    names = {**globals()}
    names.update({name: triton.jit(names[name]) for name in _HELPERS})

    def jitted(kernel):
        own = types.FunctionType(kernel.__code__, names, kernel.__name__, kernel.__defaults__)
        own.__annotations__, own.__module__, own.__qualname__ = kernel.__annotations__, kernel.__module__, \
            kernel.__qualname__  # the annotations say which parameters are tl.constexpr
        return triton.jit(own)

    return SimpleNamespace(scale_forward=jitted(_scale_forward), scale_backward=jitted(_scale_backward),
                           bias_act_forward=jitted(_bias_act_forward), bias_act_backward=jitted(_bias_act_backward),
                           noise_backward=jitted(_noise_backward))
